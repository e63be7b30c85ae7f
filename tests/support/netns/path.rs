//! A path that shrinks: large packets vanish at both ends of the veth
//! while small ones pass, as when a VPN or tunnel comes up where the ICMP
//! that would say so is filtered.

use super::super::lab;
use super::{Blocked, NetLab, CLIENT_IF, SERVER_IF};
use anyhow::{Context, Result};

impl NetLab {
    /// Turns the veth's offloads off on both ends (TSO, GSO, GRO and
    /// checksum offload, which UDP segmentation offload depends on): every
    /// packet then crosses it at the size a real wire would carry, as
    /// netfilter sees it — with them on, the kernel passes whole 64 KiB
    /// bursts of TCP or UDP between the namespaces as one packet, which a
    /// rule on packet lengths would take for one large packet. Returns
    /// false if `ethtool` is not installed, having said so through
    /// [`lab::cannot_run`] (which fails the test when lab tests are
    /// required).
    pub fn offloads_off(&self) -> Result<bool> {
        let Some(ethtool) = &self.ethtool else {
            lab::cannot_run("`ethtool` is not installed (the veth's offloads must be off)");
            return Ok(false);
        };
        let ethtool = ethtool.to_str().context("ethtool path")?;
        for (ns, dev) in [
            (self.server_ns.as_str(), SERVER_IF),
            (self.client_ns.as_str(), CLIENT_IF),
        ] {
            self.ip(&[
                "netns", "exec", ns, ethtool, "-K", dev, "tso", "off", "gso", "off", "gro", "off",
                "tx", "off",
            ])?;
        }
        Ok(true)
    }

    /// Starts a black hole for large packets: every packet of `min_len`
    /// bytes or more that arrives over the veth is dropped, at both ends,
    /// without a word (no ICMP "fragmentation needed"), while smaller ones
    /// pass — a VPN or tunnel that shrank the path's MTU where ICMP is
    /// filtered. Until the guard is lifted or dropped.
    ///
    /// Only the veth: a rule on all of INPUT would also drop what the
    /// server's loopback carries between the relay and sshd (large segments
    /// on an MTU of 64 KiB), which no tunnel does, and which nothing on the
    /// client's side could repair.
    pub fn black_hole(&self, min_len: u32) -> Result<Blocked<'_>> {
        let rule = |dev: &str| format!("INPUT -i {dev} -m length --length {min_len}:65535 -j DROP");
        let server_rules = vec![rule(SERVER_IF)];
        self.filter_batch_in(&self.server_ns, "-I", &server_rules)?;
        let mut blocked = Blocked {
            lab: self,
            rules: Vec::new(),
            server_rules,
        };
        let rules = vec![rule(CLIENT_IF)];
        self.filter_batch("-I", &rules)?;
        blocked.rules = rules;
        Ok(blocked)
    }
}
