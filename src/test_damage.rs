//! Ways to damage bytes, shared by the property tests of the parsers of
//! untrusted input (CRIU images, archives); each adds the damage that
//! knows its own format.
use proptest::prelude::*;

#[derive(Debug, Clone)]
pub(crate) enum Damage {
    Truncate(usize),
    FlipBit(usize, u8),
    Insert(usize, Vec<u8>),
}

impl Damage {
    pub(crate) fn any() -> impl Strategy<Value = Damage> {
        prop_oneof![
            any::<usize>().prop_map(Damage::Truncate),
            (any::<usize>(), 0u8..8).prop_map(|(a, b)| Damage::FlipBit(a, b)),
            (
                any::<usize>(),
                proptest::collection::vec(any::<u8>(), 1..16)
            )
                .prop_map(|(a, b)| Damage::Insert(a, b)),
        ]
    }

    /// Applies the damage at its offset modulo the length (nothing to an
    /// empty input).
    pub(crate) fn apply(&self, bytes: &mut Vec<u8>) {
        if bytes.is_empty() {
            return;
        }
        match self {
            Damage::Truncate(at) => bytes.truncate(at % bytes.len()),
            Damage::FlipBit(at, bit) => {
                let i = at % bytes.len();
                bytes[i] ^= 1 << bit;
            }
            Damage::Insert(at, data) => {
                let i = at % (bytes.len() + 1);
                bytes.splice(i..i, data.iter().copied());
            }
        }
    }
}
