//! Reload actions (issue #15): the driver tells consumers after promotion
//! and before verification, and after a rollback (`driver`); the
//! Kubernetes rollout restart against a stand-in API server that checks
//! the exact request (`kubernetes`).

mod driver;
mod kubernetes;
mod zero_downtime;
