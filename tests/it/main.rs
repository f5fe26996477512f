//! The integration-test binary: one binary, one module per concern.

mod aws_store;
mod chaos;
mod cli_simulator;
mod client_sim;
mod client_wiremock;
mod config_files;
mod crash;
mod deploy;
mod e2e_observability;
mod engine;
mod fencing;
mod harness;
mod http_endpoints;
mod leak;
mod mixed_stores;
mod prometheus_rules;
mod readiness;
mod readme_stores;
mod signals;
mod simulator_validation;
mod smoke_services;
mod store_faults;
mod support;
mod vault_kubernetes;
mod vault_store;
