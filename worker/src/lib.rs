//! cbsweep's worker: a long-lived process that registers with a coordinator, leases packs of
//! trials, trains them on its device and reports curves and outcomes.
//!
//! Owns: the gRPC client loop (`client`) and the memory budget it sends (`budget`), the
//! `Trainer` seam, the libtorch trainer (`torch`, the only module that knows tch besides the
//! binary's device flag) and a fake trainer for scheduler tests (`fake`). Must not know how the
//! coordinator stores or schedules trials.

pub mod allocation;
pub mod budget;
pub mod client;
pub mod fake;
pub mod torch;
pub mod trainer;
