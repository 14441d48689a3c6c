//! The host-side traffic lock's nftables table, made and removed over
//! nfnetlink: no `nft` process on the checkpoint and restore paths. The
//! table is the one `nft -f` would make from
//!
//! ```text
//! table inet T {
//!  chain lock_in  { type filter hook input   priority -300; iifname "IF" drop; }
//!  chain lock_fwd { type filter hook forward priority -300; iifname "IF" drop; oifname "IF" drop; }
//!  chain lock_out { type filter hook output  priority -300; oifname "IF" drop; }
//! }
//! ```
//!
//! sent as one transaction (a batch), so it is there whole or not at all.
use std::io;
use std::os::fd::OwnedFd;

use super::netlink::{
    self, attr, error_code, name_z, nested, receive, send, NLMSG_ERROR, NLM_F_ACK, NLM_F_REQUEST,
};

const NLM_F_CREATE: u16 = 0x400;
const NLM_F_EXCL: u16 = 0x200;
/// A rule goes after the chain's others (`nft add rule`), not before.
const NLM_F_APPEND: u16 = 0x800;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFPROTO_INET: u8 = 1;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFT_META_IIFNAME: u32 = 6;
const NFT_META_OIFNAME: u32 = 7;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NF_DROP: u32 = 0;
const IFNAMSIZ: usize = 16;

/// The netfilter hooks of the inet family the lock's chains sit on.
const NF_INET_LOCAL_IN: u32 = 1;
const NF_INET_FORWARD: u32 = 2;
const NF_INET_LOCAL_OUT: u32 = 3;
/// Before every other filter (nft's `priority -300`).
const PRIORITY: i32 = -300;

/// Which interface name a rule matches.
#[derive(Clone, Copy)]
enum Dir {
    In,
    Out,
}

/// Makes table `table` dropping every packet in or out of `ifname`.
/// Fails with EEXIST if the table is there already.
pub(super) fn add_lock(fd: &OwnedFd, table: &str, ifname: &str) -> io::Result<()> {
    let chains: [(&str, u32, &[Dir]); 3] = [
        ("lock_in", NF_INET_LOCAL_IN, &[Dir::In]),
        ("lock_fwd", NF_INET_FORWARD, &[Dir::In, Dir::Out]),
        ("lock_out", NF_INET_LOCAL_OUT, &[Dir::Out]),
    ];
    let mut msgs = vec![(
        NFT_MSG_NEWTABLE,
        NLM_F_CREATE | NLM_F_EXCL,
        attrs(|b| attr(b, NFTA_TABLE_NAME, &name_z(table))),
    )];
    for (chain, hook, dirs) in chains {
        msgs.push((
            NFT_MSG_NEWCHAIN,
            NLM_F_CREATE | NLM_F_EXCL,
            attrs(|b| {
                attr(b, NFTA_CHAIN_TABLE, &name_z(table));
                attr(b, NFTA_CHAIN_NAME, &name_z(chain));
                nested(b, NFTA_CHAIN_HOOK, |b| {
                    attr(b, NFTA_HOOK_HOOKNUM, &hook.to_be_bytes());
                    attr(b, NFTA_HOOK_PRIORITY, &PRIORITY.to_be_bytes());
                });
                attr(b, NFTA_CHAIN_TYPE, b"filter\0");
            }),
        ));
        for &dir in dirs {
            msgs.push((
                NFT_MSG_NEWRULE,
                NLM_F_CREATE | NLM_F_APPEND,
                attrs(|b| {
                    attr(b, NFTA_RULE_TABLE, &name_z(table));
                    attr(b, NFTA_RULE_CHAIN, &name_z(chain));
                    nested(b, NFTA_RULE_EXPRESSIONS, |b| drop_rule(b, ifname, dir));
                }),
            ));
        }
    }
    transaction(fd, &msgs)
}

/// Removes table `table` (ENOENT if it is not there).
pub(super) fn delete_table(fd: &OwnedFd, table: &str) -> io::Result<()> {
    transaction(
        fd,
        &[(
            NFT_MSG_DELTABLE,
            0,
            attrs(|b| attr(b, NFTA_TABLE_NAME, &name_z(table))),
        )],
    )
}

/// Whether table `table` of the inet family exists.
pub(super) fn has_table(fd: &OwnedFd, table: &str) -> io::Result<bool> {
    let body = attrs(|b| attr(b, NFTA_TABLE_NAME, &name_z(table)));
    let msg = message(
        (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE,
        NLM_F_REQUEST | NLM_F_ACK,
        1,
        NFPROTO_INET,
        0,
        &body,
    );
    send(fd, &msg)?;
    // The table (a NEWTABLE message), then the acknowledgement; or an error.
    let mut found = false;
    loop {
        for (typ, payload) in receive(fd)? {
            if typ != NLMSG_ERROR {
                found = true;
                continue;
            }
            return match error_code(&payload) {
                0 => Ok(found),
                c if c == -libc::ENOENT => Ok(false),
                c => Err(io::Error::from_raw_os_error(-c)),
            };
        }
    }
}

/// `meta iifname|oifname` into register 1, compared with `ifname`, then drop.
fn drop_rule(b: &mut Vec<u8>, ifname: &str, dir: Dir) {
    let key = match dir {
        Dir::In => NFT_META_IIFNAME,
        Dir::Out => NFT_META_OIFNAME,
    };
    expr(b, "meta", |b| {
        attr(b, NFTA_META_KEY, &key.to_be_bytes());
        attr(b, NFTA_META_DREG, &NFT_REG_1.to_be_bytes());
    });
    let mut name = [0u8; IFNAMSIZ];
    name[..ifname.len().min(IFNAMSIZ - 1)]
        .copy_from_slice(&ifname.as_bytes()[..ifname.len().min(IFNAMSIZ - 1)]);
    expr(b, "cmp", |b| {
        attr(b, NFTA_CMP_SREG, &NFT_REG_1.to_be_bytes());
        attr(b, NFTA_CMP_OP, &NFT_CMP_EQ.to_be_bytes());
        nested(b, NFTA_CMP_DATA, |b| attr(b, NFTA_DATA_VALUE, &name));
    });
    expr(b, "immediate", |b| {
        attr(b, NFTA_IMMEDIATE_DREG, &NFT_REG_VERDICT.to_be_bytes());
        nested(b, NFTA_IMMEDIATE_DATA, |b| {
            nested(b, NFTA_DATA_VERDICT, |b| {
                attr(b, NFTA_VERDICT_CODE, &NF_DROP.to_be_bytes())
            })
        });
    });
}

fn expr(b: &mut Vec<u8>, name: &str, data: impl FnOnce(&mut Vec<u8>)) {
    nested(b, NFTA_LIST_ELEM, |b| {
        attr(b, NFTA_EXPR_NAME, &name_z(name));
        nested(b, NFTA_EXPR_DATA, data);
    });
}

/// Sends `msgs` (type, extra flags, attributes) as one batch and waits for
/// each one's acknowledgement; the first error aborts the whole batch.
fn transaction(fd: &OwnedFd, msgs: &[(u16, u16, Vec<u8>)]) -> io::Result<()> {
    let subsys = NFNL_SUBSYS_NFTABLES.to_be();
    let mut buf = message(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, 0, 0, subsys, &[]);
    for (i, (typ, flags, body)) in msgs.iter().enumerate() {
        buf.extend(message(
            (NFNL_SUBSYS_NFTABLES << 8) | typ,
            NLM_F_REQUEST | NLM_F_ACK | flags,
            i as u32 + 1,
            NFPROTO_INET,
            0,
            body,
        ));
    }
    buf.extend(message(
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        msgs.len() as u32 + 1,
        0,
        subsys,
        &[],
    ));
    send(fd, &buf)?;
    let mut acked = 0;
    while acked < msgs.len() {
        for (typ, payload) in receive(fd)? {
            if typ != NLMSG_ERROR {
                continue;
            }
            match error_code(&payload) {
                0 => acked += 1,
                c => return Err(io::Error::from_raw_os_error(-c)),
            }
        }
    }
    Ok(())
}

/// One nfnetlink message: the netlink header, nfgenmsg (`family`,
/// version 0, `res_id`), then the attributes.
fn message(typ: u16, flags: u16, seq: u32, family: u8, res_id: u16, body: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(4 + body.len());
    b.extend_from_slice(&[family, 0]);
    b.extend_from_slice(&res_id.to_ne_bytes());
    b.extend_from_slice(body);
    netlink::message(typ, flags, seq, &b)
}

fn attrs(fill: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = Vec::new();
    fill(&mut b);
    b
}
