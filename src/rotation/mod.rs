//! Rotation: the pure state machine ([`plan`]) and the driver that executes
//! its steps against MotherDuck and the stores ([`driver`]).

pub mod driver;
pub mod plan;
