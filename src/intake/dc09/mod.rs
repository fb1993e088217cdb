//! SIA DC-09 (SIA over IP): alarm panels report here as to a receiving centre ([`receiver`]), and
//! the frame codec ([`frame`]) that the ARC transmitter (`delivery::arc`) shares.

pub mod frame;
