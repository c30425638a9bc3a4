//! The demo's shopper load generator (`cartwise-loadgen`) and the benchmark suite
//! (`cartwise-bench`): the demo's endpoints file, the shopper loop, the results JSON.

pub mod amrepo;
pub mod dashboard;
pub mod endpoints;
pub mod loadgen;
pub mod results;
pub mod swarm;
