//! Analysis: an alarm's clip decoded from the ring, the detector, the site's policy, and what
//! comes out of them: the verdict document and its evidence image.

pub mod clip;
pub mod detect;
pub mod evidence;
pub mod live;
pub mod policy;
pub mod regions;
pub mod verdict;
pub mod verify;
pub mod view;
pub mod workers;
