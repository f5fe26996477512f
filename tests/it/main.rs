//! The integration-test binary: one binary, one module per concern.

mod cli_simulator;
mod client_sim;
mod client_wiremock;
mod harness;
mod prometheus_rules;
mod simulator_validation;
mod smoke_services;
mod support;
