//! What an entry takes in memory once decoded, estimated from its wire
//! form before it is decoded.
use super::MAX_DECODED_BYTES;

/// Whether `bytes` decoded as `M` stays within [`MAX_DECODED_BYTES`]
/// (malformed bytes pass: the decoder reports them).
pub(crate) fn fits_in_memory<M: protobuf::MessageFull>(bytes: &[u8]) -> bool {
    estimate::<M>(bytes) <= MAX_DECODED_BYTES
}

/// Upper estimate of the memory `bytes` takes decoded as `M` (0 for
/// malformed bytes, which the decoder refuses).
pub(crate) fn estimate<M: protobuf::MessageFull>(bytes: &[u8]) -> u64 {
    decoded_cost(bytes, &M::descriptor(), 0).unwrap_or(0)
}

/// Upper estimate of a decoded field: an `Option` of a word, a `String`
/// or `Vec` header, a boxed message pointer.
const FIELD_BYTES: u64 = 24;
/// An unknown field is kept in a map entry of four vectors (measured at
/// about 350 bytes each, the map's growth included).
const UNKNOWN_FIELD_BYTES: u64 = 512;
/// Nesting the protobuf decoder refuses beyond.
const MAX_DEPTH: u32 = 100;

fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The wire type a field of protobuf type `t` is written with.
fn wire_type_of(t: protobuf::descriptor::field_descriptor_proto::Type) -> u64 {
    use protobuf::descriptor::field_descriptor_proto::Type::*;
    match t {
        TYPE_DOUBLE | TYPE_FIXED64 | TYPE_SFIXED64 => 1,
        TYPE_FLOAT | TYPE_FIXED32 | TYPE_SFIXED32 => 5,
        TYPE_STRING | TYPE_BYTES | TYPE_MESSAGE => 2,
        TYPE_GROUP => 3,
        _ => 0,
    }
}

/// Skips a group (as the decoder does: up to its end tag or the end of
/// the input).
fn skip_group(b: &[u8], i: &mut usize, depth: u32) -> Option<()> {
    if depth > MAX_DEPTH {
        return None;
    }
    while *i < b.len() {
        match varint(b, i)? & 7 {
            0 => {
                varint(b, i)?;
            }
            1 => *i = i.checked_add(8)?,
            5 => *i = i.checked_add(4)?,
            2 => {
                let len = usize::try_from(varint(b, i)?).ok()?;
                *i = i.checked_add(len)?;
            }
            3 => skip_group(b, i, depth + 1)?,
            4 => return Some(()),
            _ => return None,
        }
        if *i > b.len() {
            return None;
        }
    }
    Some(())
}

/// Estimates the memory `bytes` takes decoded as a `desc` message, walking
/// the wire format with the schema the way the decoder does (a field with
/// an unexpected wire type is kept as an unknown field). `None` for bytes
/// the decoder refuses too. Linear in the input: each byte is read once
/// per message that encloses it, and the schema's nesting is shallow.
pub(crate) fn decoded_cost(
    bytes: &[u8],
    desc: &protobuf::reflect::MessageDescriptor,
    depth: u32,
) -> Option<u64> {
    use protobuf::descriptor::field_descriptor_proto::{Label, Type};
    use protobuf::reflect::{RuntimeFieldType, RuntimeType};
    if depth > MAX_DEPTH {
        return None;
    }
    let mut cost = FIELD_BYTES * (desc.fields().count() as u64 + 2);
    let mut i = 0;
    while i < bytes.len() {
        let tag = varint(bytes, &mut i)?;
        let wire = tag & 7;
        let field = desc.field_by_number(u32::try_from(tag >> 3).ok()?);
        let len = match wire {
            0 => {
                varint(bytes, &mut i)?;
                0
            }
            1 => 8,
            5 => 4,
            2 => varint(bytes, &mut i)?,
            3 => {
                skip_group(bytes, &mut i, depth + 1)?;
                cost += UNKNOWN_FIELD_BYTES;
                continue;
            }
            _ => return None,
        };
        // The decoder accepts a top-level message field whose declared
        // length runs past the input (it stops at the end), so the body
        // is clamped rather than refused: an upper estimate either way.
        let end = i.checked_add(usize::try_from(len).ok()?)?.min(bytes.len());
        let body = bytes.get(i..end)?;
        i = end;
        let Some(f) = field else {
            cost += UNKNOWN_FIELD_BYTES + len;
            continue;
        };
        let ty = f.proto().type_();
        let repeated = f.proto().label() == Label::LABEL_REPEATED;
        let packed = repeated && wire == 2 && wire_type_of(ty) != 2;
        if wire != wire_type_of(ty) && !packed {
            cost += UNKNOWN_FIELD_BYTES + len;
            continue;
        }
        cost += match f.runtime_field_type() {
            RuntimeFieldType::Singular(RuntimeType::Message(d))
            | RuntimeFieldType::Repeated(RuntimeType::Message(d)) => {
                FIELD_BYTES + decoded_cost(body, &d, depth + 1)?
            }
            // Packed scalars: up to eight bytes per byte on the wire.
            _ if packed => FIELD_BYTES + 8 * len,
            _ if ty == Type::TYPE_STRING || ty == Type::TYPE_BYTES => FIELD_BYTES + len,
            _ if repeated => 8,
            // Singular scalars live in the message itself.
            _ => 0,
        };
    }
    Some(cost)
}
