//! switchboard: a real-time WebSocket server that speaks the WebSocket APIs of five
//! existing backends, keeps its state in one SQLite file, and runs as one small static
//! binary. See ARCHITECTURE.md for the code map and the invariants.

pub mod api;
pub mod app;
pub mod auth;
pub mod bus;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod console;
pub mod context;
pub mod endpoints;
pub mod engine;
pub mod event;
pub mod features;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod model;
pub mod recent;
pub mod request;
pub mod route;
pub mod sequencer;
pub mod server;
pub mod store;
pub mod tx;
pub mod webhook;
