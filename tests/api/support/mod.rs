//! Fakes the tests share: stand-ins for the network between observe and what it talks to.

pub mod proxy;
pub mod stalled_redis;
