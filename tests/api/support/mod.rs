//! Fakes the tests share: stand-ins for the network between observe and what it talks to;
//! and the read side's tenant ([`reads::Reader`]), which reads back what it ingested.

pub mod binary;
pub mod otlp;
pub mod proxy;
pub mod reads;
pub mod squad;
pub mod stalled_redis;
