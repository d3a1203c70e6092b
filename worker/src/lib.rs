//! cbsweep's worker: a long-lived process that registers with a coordinator, leases packs of
//! trials, trains them on its device and reports curves and outcomes.
//!
//! Owns: the gRPC client loop (`client`, the only place that touches wire types), the memory
//! budget it sends (`budget`), the allocation's deadline (`allocation`) and a fake trainer for
//! scheduler tests (`fake`). Training itself is `cbsweep_train`'s, driven through its
//! `trainer::Trainer` seam. Must not know how the coordinator stores or schedules trials.

pub mod allocation;
pub mod budget;
pub mod client;
pub mod fake;
