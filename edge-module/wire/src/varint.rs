//! LEB128 varints and zigzag signed integers: small numbers take one byte, which is what keeps
//! a typical delta entry near ten bytes.

use crate::WireError;

/// A u64 never needs more than ten LEB128 bytes.
pub const VARINT_BYTES_MAX: usize = 10;

/// The bytes [`put_u64`] writes for `value` (a `const fn`, so that format bounds can be named
/// constants).
pub const fn varint_bytes(mut value: u64) -> usize {
    let mut bytes = 1;
    while value >= 0x80 {
        value >>= 7;
        bytes += 1;
    }
    bytes
}

pub fn put_u64(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

pub fn put_i64(out: &mut Vec<u8>, value: i64) {
    put_u64(out, zigzag_encode(value));
}

pub fn zigzag_encode(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

pub fn zigzag_decode(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

/// A cursor over untrusted bytes: every read is bounds-checked and reports `Truncated` instead of
/// panicking, and varints that would overflow 64 bits or use non-minimal padding are rejected.
#[derive(Debug)]
pub struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, position: 0 }
    }

    pub fn position(&self) -> usize {
        self.position
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.position
    }

    pub fn u8(&mut self) -> Result<u8, WireError> {
        let byte = *self.bytes.get(self.position).ok_or(WireError::Truncated {
            offset: self.position,
        })?;
        self.position += 1;
        Ok(byte)
    }

    pub fn take(&mut self, length: usize) -> Result<&'a [u8], WireError> {
        let end = self
            .position
            .checked_add(length)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(WireError::Truncated {
                offset: self.position,
            })?;
        let slice = &self.bytes[self.position..end];
        self.position = end;
        Ok(slice)
    }

    pub fn u64(&mut self) -> Result<u64, WireError> {
        let start = self.position;
        let mut value: u64 = 0;
        for index in 0..VARINT_BYTES_MAX {
            let byte = self.u8()?;
            let low = u64::from(byte & 0x7f);
            // The tenth byte may only carry the single top bit of a u64.
            if index == VARINT_BYTES_MAX - 1 && low > 1 {
                return Err(WireError::VarintOverflow { offset: start });
            }
            value |= low << (7 * index);
            if byte & 0x80 == 0 {
                // A zero final byte after the first means the encoder padded: not canonical.
                if index > 0 && byte == 0 {
                    return Err(WireError::VarintNotMinimal { offset: start });
                }
                return Ok(value);
            }
        }
        Err(WireError::VarintOverflow { offset: start })
    }

    pub fn i64(&mut self) -> Result<i64, WireError> {
        Ok(zigzag_decode(self.u64()?))
    }

    /// A length prefix, checked against `max` before anything is read or allocated.
    pub fn length(&mut self, what: &'static str, max: usize) -> Result<usize, WireError> {
        let offset = self.position;
        let length = self.u64()?;
        if length > max as u64 {
            return Err(WireError::TooLong {
                what,
                length,
                max: max as u64,
                offset,
            });
        }
        Ok(length as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_boundaries() {
        for value in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_u64(&mut out, value);
            assert!(out.len() <= VARINT_BYTES_MAX);
            assert_eq!(varint_bytes(value), out.len(), "{value}");
            let mut reader = Reader::new(&out);
            assert_eq!(reader.position(), 0);
            assert_eq!(reader.u64().unwrap(), value);
            assert_eq!(reader.remaining(), 0);
            assert_eq!(reader.position(), out.len());
        }
    }

    #[test]
    fn varint_lengths_step_every_seven_bits() {
        let lengths: Vec<usize> = [0, 127, 128, 16_383, 16_384, 1 << 56, u64::MAX]
            .into_iter()
            .map(varint_bytes)
            .collect();
        assert_eq!(lengths, [1, 1, 2, 2, 3, 9, 10]);
        assert_eq!(varint_bytes(u64::MAX), VARINT_BYTES_MAX);
    }

    #[test]
    fn zigzag_round_trips() {
        for value in [0, -1, 1, i64::MIN, i64::MAX, -64, 63] {
            assert_eq!(zigzag_decode(zigzag_encode(value)), value);
        }
        assert_eq!(zigzag_encode(-1), 1);
        assert_eq!(zigzag_encode(1), 2);
    }

    #[test]
    fn rejects_overflow_and_padding() {
        let eleven = [0xff; 11];
        assert!(matches!(
            Reader::new(&eleven).u64(),
            Err(WireError::VarintOverflow { .. })
        ));
        let tenth_too_big = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        assert!(matches!(
            Reader::new(&tenth_too_big).u64(),
            Err(WireError::VarintOverflow { .. })
        ));
        assert!(matches!(
            Reader::new(&[0x80, 0x00]).u64(),
            Err(WireError::VarintNotMinimal { .. })
        ));
        assert!(matches!(
            Reader::new(&[0x80]).u64(),
            Err(WireError::Truncated { .. })
        ));
    }
}
