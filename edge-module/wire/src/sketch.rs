//! The unique-visitor sketch: a HyperLogLog with 2^14 registers (standard error 1.04/sqrt(m) =
//! 0.81%), a fixed hash so that sketches made on different edges merge, a sparse form for small
//! cardinalities, and Ertl's improved estimator, which needs no empirical bias tables and is
//! unbiased from one visitor to billions.

use std::sync::{Arc, OnceLock};

use crate::WireError;
use crate::varint::{self, Reader};

/// log2 of the number of registers.
pub const SKETCH_PRECISION: u32 = 14;
/// Number of registers, `m`.
pub const SKETCH_REGISTERS: usize = 1 << SKETCH_PRECISION;
/// The hash bits left after the register index, `q`; ranks run from 1 to `q + 1`.
const HASH_BITS_AFTER_INDEX: u32 = 64 - SKETCH_PRECISION;
/// The largest register value a 64-bit hash can produce.
pub const SKETCH_RANK_MAX: u8 = (HASH_BITS_AFTER_INDEX + 1) as u8;
/// Relative standard error of an estimate: 1.04 / sqrt(m).
pub const SKETCH_STANDARD_ERROR: f64 = 0.008_125;
/// Past this many set registers the in-memory sparse list is costlier than the dense array.
pub const SPARSE_REGISTERS_MAX: usize = 1_024;
/// Dense registers are six bits each on the wire.
pub const DENSE_ENCODED_BYTES: usize = SKETCH_REGISTERS * 6 / 8;
/// The encoded size of any sketch is at most this (tag plus dense registers).
pub const SKETCH_ENCODED_BYTES_MAX: usize = 1 + DENSE_ENCODED_BYTES;

/// Seed of the visitor hash. Changing it makes new sketches unmergeable with stored ones, so it
/// is part of the wire format.
const VISITOR_HASH_SEED: u64 = 0x6869_7463_6f75_6e74; // "hitcount"

const TAG_EMPTY: u8 = 0;
const TAG_SPARSE: u8 = 1;
const TAG_DENSE: u8 = 2;

/// Hashes a visitor identifier the same way on every edge and in the aggregator.
pub fn visitor_hash(visitor: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(visitor, VISITOR_HASH_SEED)
}

#[derive(Clone)]
enum Registers {
    /// Set registers only, sorted by index, each with a rank in 1..=SKETCH_RANK_MAX.
    Sparse(Vec<(u16, u8)>),
    /// All registers, shared by the sketch's clones until one of them changes (copy on write).
    Dense(Arc<DenseRegisters>),
}

/// All registers and their estimate, made at most once. A reader that holds decoded cells in
/// memory hands out clones of them on every read and folds them into points and totals: sharing
/// the registers makes such a clone, and a merge into an empty sketch, cost no copy of 16 KiB,
/// and the estimate of a point with one cell is made once, not on every read.
#[derive(Clone)]
struct DenseRegisters {
    ranks: Box<[u8]>,
    estimate: OnceLock<f64>,
}

impl DenseRegisters {
    fn new(ranks: Box<[u8]>) -> Arc<Self> {
        debug_assert_eq!(ranks.len(), SKETCH_REGISTERS);
        Arc::new(Self {
            ranks,
            estimate: OnceLock::new(),
        })
    }

    /// The ranks to change, copied first if another sketch shares them; the estimate is dropped.
    fn ranks_mut(shared: &mut Arc<Self>) -> &mut [u8] {
        let dense = Arc::make_mut(shared);
        dense.estimate.take();
        &mut dense.ranks
    }
}

/// A mergeable unique-visitor sketch.
#[derive(Clone)]
pub struct Sketch {
    registers: Registers,
}

/// Two sketches are equal when their registers are, whatever form each is held in. The canonical
/// encoding is a function of the registers alone, so comparing it is exact.
impl PartialEq for Sketch {
    fn eq(&self, other: &Self) -> bool {
        self.to_bytes() == other.to_bytes()
    }
}

impl Eq for Sketch {}

impl std::fmt::Debug for Sketch {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let form = match &self.registers {
            Registers::Sparse(list) => format!("sparse({})", list.len()),
            Registers::Dense(_) => "dense".to_owned(),
        };
        formatter
            .debug_struct("Sketch")
            .field("form", &form)
            .field("estimate", &self.estimate())
            .finish()
    }
}

impl Default for Sketch {
    fn default() -> Self {
        Self::new()
    }
}

fn index_and_rank(hash: u64) -> (u16, u8) {
    let index = (hash >> HASH_BITS_AFTER_INDEX) as u16;
    let remaining = hash << SKETCH_PRECISION;
    let rank = (remaining.leading_zeros() + 1).min(HASH_BITS_AFTER_INDEX + 1) as u8;
    (index, rank)
}

impl Sketch {
    pub fn new() -> Self {
        Self {
            registers: Registers::Sparse(Vec::new()),
        }
    }

    pub fn is_empty(&self) -> bool {
        match &self.registers {
            Registers::Sparse(list) => list.is_empty(),
            Registers::Dense(dense) => dense.ranks.iter().all(|rank| *rank == 0),
        }
    }

    /// The bytes its registers take in memory (not the size of the struct itself): what a cache
    /// of decoded sketches weighs them by.
    pub fn heap_bytes(&self) -> usize {
        match &self.registers {
            Registers::Sparse(list) => list.capacity() * std::mem::size_of::<(u16, u8)>(),
            Registers::Dense(dense) => dense.ranks.len(),
        }
    }

    /// Adds a visitor by the hash `visitor_hash` (or any uniformly distributed 64-bit hash) gave.
    pub fn insert_hash(&mut self, hash: u64) {
        let (index, rank) = index_and_rank(hash);
        self.set_max(index, rank);
    }

    pub fn insert(&mut self, visitor: &[u8]) {
        self.insert_hash(visitor_hash(visitor));
    }

    fn set_max(&mut self, index: u16, rank: u8) {
        debug_assert!((1..=SKETCH_RANK_MAX).contains(&rank));
        match &mut self.registers {
            Registers::Dense(dense) => {
                // Most visitors of a busy resource were seen before: a rank that changes nothing
                // neither copies shared ranks nor drops the estimate.
                if dense.ranks[usize::from(index)] < rank {
                    DenseRegisters::ranks_mut(dense)[usize::from(index)] = rank;
                }
            }
            Registers::Sparse(list) => {
                match list.binary_search_by_key(&index, |(i, _)| *i) {
                    Ok(position) => list[position].1 = list[position].1.max(rank),
                    Err(position) => list.insert(position, (index, rank)),
                }
                if list.len() > SPARSE_REGISTERS_MAX {
                    self.densify();
                }
            }
        }
    }

    fn densify(&mut self) {
        if let Registers::Sparse(list) = &self.registers {
            let mut registers = vec![0u8; SKETCH_REGISTERS].into_boxed_slice();
            for (index, rank) in list {
                registers[usize::from(*index)] = *rank;
            }
            self.registers = Registers::Dense(DenseRegisters::new(registers));
        }
    }

    /// Makes `self` the sketch of the union of both visitor sets.
    pub fn merge(&mut self, other: &Sketch) {
        match &other.registers {
            Registers::Sparse(list) => {
                for (index, rank) in list {
                    self.set_max(*index, *rank);
                }
            }
            Registers::Dense(theirs) => match &mut self.registers {
                // Take their ranks, shared, and set ours in them: an empty sketch (a series
                // point, a total) becomes a dense one's clone without a copy.
                Registers::Sparse(list) => {
                    let mine = std::mem::take(list);
                    self.registers = Registers::Dense(Arc::clone(theirs));
                    for (index, rank) in mine {
                        self.set_max(index, rank);
                    }
                }
                Registers::Dense(dense) => {
                    if !Arc::ptr_eq(dense, theirs) {
                        let ranks = DenseRegisters::ranks_mut(dense);
                        for (mine, theirs) in ranks.iter_mut().zip(theirs.ranks.iter()) {
                            *mine = (*mine).max(*theirs);
                        }
                    }
                }
            },
        }
    }

    /// The estimated number of distinct visitors (Ertl 2017, "New cardinality estimation
    /// algorithms for HyperLogLog sketches", algorithm 6).
    /// A dense sketch's estimate is made once and shared with its clones until one changes.
    pub fn estimate(&self) -> f64 {
        let mut histogram = [0u32; SKETCH_RANK_MAX as usize + 1];
        match &self.registers {
            Registers::Sparse(list) => {
                histogram[0] = (SKETCH_REGISTERS - list.len()) as u32;
                for (_, rank) in list {
                    histogram[usize::from(*rank)] += 1;
                }
            }
            Registers::Dense(dense) => {
                return *dense.estimate.get_or_init(|| {
                    for rank in dense.ranks.iter() {
                        histogram[usize::from(*rank)] += 1;
                    }
                    estimate_from(&histogram)
                });
            }
        }
        estimate_from(&histogram)
    }
    /// The estimate rounded to a whole number of visitors.
    pub fn count(&self) -> u64 {
        self.estimate().round() as u64
    }

    /// Appends the canonical encoding: the empty tag, or whichever of sparse and dense is smaller.
    /// It allocates nothing beyond `out`: sketches are encoded on every merge and compaction.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match &self.registers {
            Registers::Sparse(list) if list.is_empty() => out.push(TAG_EMPTY),
            // At most SPARSE_REGISTERS_MAX registers of at most three bytes: always under dense.
            Registers::Sparse(list) => encode_sparse(out, list.iter().copied(), list.len()),
            Registers::Dense(dense) => {
                let registers = &dense.ranks;
                let set = || {
                    registers
                        .iter()
                        .enumerate()
                        .filter(|(_, rank)| **rank != 0)
                        .map(|(index, rank)| (index as u16, *rank))
                };
                let (count, sparse_bytes) = sparse_size(set());
                if count == 0 {
                    out.push(TAG_EMPTY);
                } else if sparse_bytes < DENSE_ENCODED_BYTES {
                    encode_sparse(out, set(), count);
                } else {
                    out.push(TAG_DENSE);
                    // Four six-bit registers fill three bytes exactly.
                    for chunk in registers.chunks_exact(4) {
                        let packed = u32::from(chunk[0])
                            | (u32::from(chunk[1]) << 6)
                            | (u32::from(chunk[2]) << 12)
                            | (u32::from(chunk[3]) << 18);
                        out.extend_from_slice(&packed.to_le_bytes()[..3]);
                    }
                }
            }
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes one sketch, rejecting register indexes out of order or range and impossible ranks.
    pub fn decode(reader: &mut Reader<'_>) -> Result<Self, WireError> {
        let offset = reader.position();
        match reader.u8()? {
            TAG_EMPTY => Ok(Self::new()),
            TAG_SPARSE => {
                let count = reader.length("sketch registers", SKETCH_REGISTERS)?;
                if count == 0 {
                    return Err(WireError::SketchInvalid {
                        offset,
                        reason: "sparse sketch with no registers",
                    });
                }
                let mut list = Vec::with_capacity(count.min(SPARSE_REGISTERS_MAX + 1));
                let mut previous: Option<u64> = None;
                for _ in 0..count {
                    let word = reader.u64()?;
                    let rank = (word & 0x3f) as u8;
                    let delta = word >> 6;
                    let index = match previous {
                        None => delta,
                        Some(previous) => {
                            if delta == 0 {
                                return Err(WireError::SketchInvalid {
                                    offset,
                                    reason: "register indexes not strictly increasing",
                                });
                            }
                            previous
                                .checked_add(delta)
                                .ok_or(WireError::SketchInvalid {
                                    offset,
                                    reason: "register index overflows",
                                })?
                        }
                    };
                    if index >= SKETCH_REGISTERS as u64 {
                        return Err(WireError::SketchInvalid {
                            offset,
                            reason: "register index out of range",
                        });
                    }
                    if rank == 0 || rank > SKETCH_RANK_MAX {
                        return Err(WireError::SketchInvalid {
                            offset,
                            reason: "register rank out of range",
                        });
                    }
                    list.push((index as u16, rank));
                    previous = Some(index);
                }
                let mut sketch = Self {
                    registers: Registers::Sparse(list),
                };
                if let Registers::Sparse(list) = &sketch.registers
                    && list.len() > SPARSE_REGISTERS_MAX
                {
                    sketch.densify();
                }
                Ok(sketch)
            }
            TAG_DENSE => {
                let bytes = reader.take(DENSE_ENCODED_BYTES)?;
                let mut registers = vec![0u8; SKETCH_REGISTERS].into_boxed_slice();
                for (chunk, out) in bytes.chunks_exact(3).zip(registers.chunks_exact_mut(4)) {
                    let packed = u32::from(chunk[0])
                        | (u32::from(chunk[1]) << 8)
                        | (u32::from(chunk[2]) << 16);
                    for (slot, register) in out.iter_mut().enumerate() {
                        *register = ((packed >> (6 * slot)) & 0x3f) as u8;
                    }
                }
                if registers.iter().any(|rank| *rank > SKETCH_RANK_MAX) {
                    return Err(WireError::SketchInvalid {
                        offset,
                        reason: "register rank out of range",
                    });
                }
                Ok(Self {
                    registers: Registers::Dense(DenseRegisters::new(registers)),
                })
            }
            // Every tag up to TAG_DENSE is matched above.
            _ => Err(WireError::SketchInvalid {
                offset,
                reason: "unknown sketch form",
            }),
        }
    }

    /// Decodes a whole byte string as one sketch, as stores keep them.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, WireError> {
        let mut reader = Reader::new(bytes);
        let sketch = Self::decode(&mut reader)?;
        if reader.remaining() != 0 {
            return Err(WireError::TrailingBytes {
                offset: reader.position(),
            });
        }
        Ok(sketch)
    }
}

fn varint_length(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// Each set register is one varint: the index delta from the previous register, shifted left six
/// bits, with the rank in the low six bits.
fn sparse_word(previous: Option<u16>, index: u16, rank: u8) -> u64 {
    let delta = match previous {
        None => u64::from(index),
        Some(previous) => u64::from(index - previous),
    };
    (delta << 6) | u64::from(rank)
}

/// (set registers, bytes of the sparse form without its tag).
fn sparse_size(set: impl Iterator<Item = (u16, u8)>) -> (usize, usize) {
    let mut count = 0;
    let mut bytes = 0;
    let mut previous = None;
    for (index, rank) in set {
        count += 1;
        bytes += varint_length(sparse_word(previous, index, rank));
        previous = Some(index);
    }
    (count, bytes + varint_length(count as u64))
}

fn encode_sparse(out: &mut Vec<u8>, set: impl Iterator<Item = (u16, u8)>, count: usize) {
    out.push(TAG_SPARSE);
    varint::put_u64(out, count as u64);
    let mut previous = None;
    for (index, rank) in set {
        varint::put_u64(out, sparse_word(previous, index, rank));
        previous = Some(index);
    }
}

/// Ertl's estimate from the histogram of register ranks (index: rank, value: registers).
fn estimate_from(histogram: &[u32; SKETCH_RANK_MAX as usize + 1]) -> f64 {
    let m = SKETCH_REGISTERS as f64;
    if histogram[0] as usize == SKETCH_REGISTERS {
        return 0.0;
    }
    let q = HASH_BITS_AFTER_INDEX as usize;
    let mut z = m * tau(1.0 - f64::from(histogram[q + 1]) / m);
    for count in histogram[1..=q].iter().rev() {
        z = 0.5 * (z + f64::from(*count));
    }
    z += m * sigma(f64::from(histogram[0]) / m);
    let alpha_infinity = 1.0 / (2.0 * std::f64::consts::LN_2);
    alpha_infinity * m * m / z
}

/// Ertl's sigma function, for the registers that are still zero.
fn sigma(x: f64) -> f64 {
    if x == 1.0 {
        return f64::INFINITY;
    }
    let mut x = x;
    let mut y = 1.0;
    let mut z = x;
    loop {
        x *= x;
        let previous = z;
        z += x * y;
        y += y;
        if z == previous {
            return z;
        }
    }
}

/// Ertl's tau function, for the registers that saturated.
fn tau(x: f64) -> f64 {
    if x == 0.0 || x == 1.0 {
        return 0.0;
    }
    let mut x = x;
    let mut y = 1.0;
    let mut z = 1.0 - x;
    loop {
        x = x.sqrt();
        let previous = z;
        y *= 0.5;
        z -= (1.0 - x).powi(2) * y;
        if z == previous {
            return z / 3.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sketch_of(range: std::ops::Range<u64>) -> Sketch {
        let mut sketch = Sketch::new();
        for visitor in range {
            sketch.insert(&visitor.to_le_bytes());
        }
        sketch
    }

    fn relative_error(sketch: &Sketch, truth: u64) -> f64 {
        (sketch.estimate() - truth as f64).abs() / truth as f64
    }

    #[test]
    fn empty_sketch_counts_zero() {
        assert_eq!(Sketch::new().count(), 0);
        assert_eq!(Sketch::new().to_bytes(), vec![TAG_EMPTY]);
    }

    #[test]
    fn ranks_run_from_one_to_the_most_the_hash_can_show() {
        // All zeros after the index: the longest run a hash can have, capped at the rank bound.
        assert_eq!(index_and_rank(0), (0, SKETCH_RANK_MAX));
        assert_eq!(SKETCH_RANK_MAX, 51);
        // A one right after the index: rank 1, in the last register.
        assert_eq!(index_and_rank(u64::MAX), ((SKETCH_REGISTERS - 1) as u16, 1));
        assert_eq!(index_and_rank(1 << (HASH_BITS_AFTER_INDEX - 3)), (0, 3));
    }

    /// A hash that lands in register `index` with rank 1.
    fn in_register(index: usize) -> u64 {
        ((index as u64) << HASH_BITS_AFTER_INDEX) | (1 << (HASH_BITS_AFTER_INDEX - 1))
    }

    #[test]
    fn a_sketch_turns_dense_past_its_sparse_bound_and_says_so() {
        let mut sketch = Sketch::new();
        assert!(sketch.is_empty());
        assert_eq!(
            format!("{sketch:?}"),
            r#"Sketch { form: "sparse(0)", estimate: 0.0 }"#
        );
        for index in 0..SPARSE_REGISTERS_MAX {
            sketch.insert_hash(in_register(index));
        }
        assert!(!sketch.is_empty());
        assert!(format!("{sketch:?}").contains(&format!("sparse({SPARSE_REGISTERS_MAX})")));
        // The same register again changes nothing; one more register is past the bound.
        sketch.insert_hash(in_register(0));
        assert!(format!("{sketch:?}").contains("sparse("));
        sketch.insert_hash(in_register(SPARSE_REGISTERS_MAX));
        assert!(
            format!("{sketch:?}").contains(r#"form: "dense""#),
            "{sketch:?}"
        );
        assert!(!sketch.is_empty());
    }

    #[test]
    fn a_dense_sketch_with_every_register_set_is_not_empty() {
        let mut sketch = Sketch::new();
        for index in 0..SKETCH_REGISTERS {
            sketch.insert_hash(in_register(index));
        }
        // Every register set: the mutation "empty means every register non-zero" would say yes.
        assert!(!sketch.is_empty());
        assert!(format!("{sketch:?}").contains(r#"form: "dense""#));
    }

    #[test]
    fn both_forms_of_the_same_registers_estimate_alike() {
        let sparse = sketch_of(0..1_000);
        assert!(format!("{sparse:?}").contains("sparse("), "{sparse:?}");
        let mut dense = sparse.clone();
        dense.densify();
        assert!(format!("{dense:?}").contains(r#"form: "dense""#));
        assert_eq!(sparse.estimate(), dense.estimate());
    }

    /// A hash that lands in register `index` with `rank` (1 ..= SKETCH_RANK_MAX).
    fn ranked(index: usize, rank: u8) -> u64 {
        let after_index = match u32::from(rank) {
            rank if rank > HASH_BITS_AFTER_INDEX => 0,
            rank => 1 << (HASH_BITS_AFTER_INDEX - rank),
        };
        ((index as u64) << HASH_BITS_AFTER_INDEX) | after_index
    }

    fn close(actual: f64, expected: f64) -> bool {
        (actual - expected).abs() <= 1e-12 * expected.abs().max(1.0)
    }

    /// Saturated registers (rank SKETCH_RANK_MAX) take Ertl's tau term, which ordinary data
    /// almost never reaches. The expected values come from an independent Python rendering of
    /// Ertl's algorithm 6, not from this code.
    #[test]
    fn saturated_registers_are_estimated_as_ertl_says() {
        assert_eq!(tau(0.0), 0.0);
        assert_eq!(tau(1.0), 0.0);
        assert!(close(tau(0.5), 0.149_929_495_864_088_07), "{}", tau(0.5));
        assert!(close(tau(0.25), 0.199_964_747_932_044_02), "{}", tau(0.25));
        let mut sketch = Sketch::new();
        for index in 0..100 {
            sketch.insert_hash(ranked(index, SKETCH_RANK_MAX));
        }
        for index in 100..5_100 {
            sketch.insert_hash(ranked(index, 1));
        }
        assert!(
            close(sketch.estimate(), 5_942.761_887_913_916),
            "{}",
            sketch.estimate()
        );
    }

    #[test]
    fn decoding_keeps_the_form_bound_and_the_rank_bound() {
        let mut at_bound = Sketch::new();
        for index in 0..SPARSE_REGISTERS_MAX {
            at_bound.insert_hash(ranked(index, SKETCH_RANK_MAX));
        }
        let decoded = Sketch::from_bytes(&at_bound.to_bytes()).unwrap();
        assert!(format!("{decoded:?}").contains(&format!("sparse({SPARSE_REGISTERS_MAX})")));
        assert_eq!(decoded, at_bound, "the highest rank decodes");
        let mut past_bound = at_bound.clone();
        past_bound.insert_hash(ranked(SPARSE_REGISTERS_MAX, 1));
        // Written sparse (it is smaller), read back dense: what a sketch past the bound is.
        assert_eq!(past_bound.to_bytes()[0], TAG_SPARSE);
        let decoded = Sketch::from_bytes(&past_bound.to_bytes()).unwrap();
        assert!(
            format!("{decoded:?}").contains(r#"form: "dense""#),
            "{decoded:?}"
        );
        // A rank past the bound, in either form, is refused.
        let mut sparse = vec![TAG_SPARSE];
        varint::put_u64(&mut sparse, 1);
        varint::put_u64(&mut sparse, sparse_word(None, 3, SKETCH_RANK_MAX + 1));
        assert!(matches!(
            Sketch::from_bytes(&sparse),
            Err(WireError::SketchInvalid { .. })
        ));
        let mut dense = vec![TAG_DENSE];
        dense.extend(std::iter::repeat_n(0, DENSE_ENCODED_BYTES));
        dense[1] = SKETCH_RANK_MAX + 1;
        assert!(matches!(
            Sketch::from_bytes(&dense),
            Err(WireError::SketchInvalid { .. })
        ));
        dense[1] = SKETCH_RANK_MAX;
        assert!(Sketch::from_bytes(&dense).is_ok());
    }

    /// The sparse form is written only when it is smaller than the dense one; on a tie, dense.
    #[test]
    fn the_smaller_form_is_written_and_a_tie_goes_dense() {
        // Registers two apart from index 2 on: a two-byte word each, plus two bytes of count.
        let spaced = |registers: usize| {
            let mut sketch = Sketch::new();
            for register in 1..=registers {
                sketch.insert_hash(ranked(2 * register, 1));
            }
            sketch
        };
        let words = (1..=6_143u16).map(|register| (2 * register, 1));
        assert_eq!(sparse_size(words).1, DENSE_ENCODED_BYTES);
        assert_eq!(spaced(6_143).to_bytes()[0], TAG_DENSE);
        assert_eq!(spaced(6_142).to_bytes()[0], TAG_SPARSE);
        assert_eq!(spaced(6_142).to_bytes().len(), 1 + DENSE_ENCODED_BYTES - 2);
        let mut unknown = vec![TAG_DENSE + 1];
        unknown.extend(std::iter::repeat_n(0, DENSE_ENCODED_BYTES));
        assert_eq!(
            Sketch::from_bytes(&unknown),
            Err(WireError::SketchInvalid {
                offset: 0,
                reason: "unknown sketch form"
            })
        );
    }

    #[test]
    fn small_sets_are_exact() {
        for truth in [1u64, 2, 3, 10, 50, 100] {
            assert_eq!(sketch_of(0..truth).count(), truth, "at {truth}");
        }
    }

    #[test]
    fn duplicates_do_not_count() {
        let mut sketch = sketch_of(0..500);
        for visitor in 0..500u64 {
            sketch.insert(&visitor.to_le_bytes());
        }
        assert_eq!(sketch, sketch_of(0..500));
    }

    /// The error bound the README promises: within three standard errors at each scale.
    #[test]
    fn error_bound_at_one_thousand_hundred_thousand_and_one_million() {
        for truth in [1_000u64, 100_000, 1_000_000] {
            let sketch = sketch_of(0..truth);
            let error = relative_error(&sketch, truth);
            assert!(
                error <= 3.0 * SKETCH_STANDARD_ERROR,
                "{truth} visitors estimated as {}, error {error}",
                sketch.estimate()
            );
        }
    }

    /// Across many independent sets the root-mean-square error matches the design (about 0.81%).
    #[test]
    fn root_mean_square_error_is_near_the_standard_error() {
        let truth = 20_000u64;
        let trials = 40u64;
        let mut squares = 0.0;
        for trial in 0..trials {
            let start = trial * 1_000_000_000;
            let error = relative_error(&sketch_of(start..start + truth), truth);
            squares += error * error;
        }
        let rms = (squares / trials as f64).sqrt();
        assert!(rms < 0.0125, "rms error {rms}");
    }

    #[test]
    fn merging_equals_inserting_everything_into_one() {
        let mut left = sketch_of(0..30_000);
        let right = sketch_of(20_000..60_000);
        left.merge(&right);
        assert_eq!(left, sketch_of(0..60_000));
        let error = relative_error(&left, 60_000);
        assert!(error <= 3.0 * SKETCH_STANDARD_ERROR);
    }

    #[test]
    fn sparse_and_dense_merge_in_any_order() {
        let small = sketch_of(0..10);
        let large = sketch_of(5..5_000);
        let mut a = small.clone();
        a.merge(&large);
        let mut b = large.clone();
        b.merge(&small);
        assert_eq!(a.to_bytes(), b.to_bytes());
        assert_eq!(a.count(), sketch_of(0..5_000).count());
    }

    #[test]
    fn encoding_round_trips_in_both_forms() {
        for truth in [0u64, 1, 200, 3_000, 200_000] {
            let sketch = sketch_of(0..truth);
            let bytes = sketch.to_bytes();
            assert!(bytes.len() <= SKETCH_ENCODED_BYTES_MAX);
            let decoded = Sketch::from_bytes(&bytes).unwrap();
            assert_eq!(decoded.to_bytes(), bytes);
            assert_eq!(decoded.count(), sketch.count());
        }
        assert_eq!(sketch_of(0..200_000).to_bytes()[0], TAG_DENSE);
        assert_eq!(sketch_of(0..200).to_bytes()[0], TAG_SPARSE);
    }

    /// Clones share dense ranks and their estimate; a change to one copies first and is
    /// estimated again, whichever way it changes (an insert, a merge from either form).
    #[test]
    fn a_changed_clone_is_estimated_again_and_leaves_the_original_alone() {
        let fresh = |sketch: &Sketch| Sketch::from_bytes(&sketch.to_bytes()).unwrap().estimate();
        let original = sketch_of(0..5_000);
        let before = original.estimate();
        let mut inserted = original.clone();
        inserted.insert(b"someone new who raises a register");
        for visitor in 5_000..6_000_u32 {
            inserted.insert(&visitor.to_le_bytes());
        }
        let mut merged_dense = original.clone();
        merged_dense.merge(&sketch_of(10_000..20_000));
        let mut merged_sparse = original.clone();
        merged_sparse.merge(&sketch_of(30_000..30_100));
        let mut into_sparse = sketch_of(40_000..40_050);
        into_sparse.merge(&original);
        assert_eq!(into_sparse, {
            let mut union = sketch_of(40_000..40_050);
            union.densify();
            union.merge(&sketch_of(0..5_000));
            union
        });
        for changed in [&inserted, &merged_dense, &merged_sparse, &into_sparse] {
            assert!(changed.estimate() > before, "{changed:?}");
            assert_eq!(changed.estimate(), fresh(changed), "{changed:?}");
        }
        assert_eq!(original.estimate(), before);
        assert_eq!(original, sketch_of(0..5_000));
        // A merge into an empty sketch takes the ranks shared.
        let mut empty = Sketch::new();
        empty.merge(&original);
        assert!(matches!(
            (&empty.registers, &original.registers),
            (Registers::Dense(a), Registers::Dense(b)) if Arc::ptr_eq(a, b)
        ));
    }

    #[test]
    fn equality_ignores_the_form_held_in_memory() {
        let sparse = sketch_of(0..3);
        let mut dense = Sketch {
            registers: Registers::Dense(DenseRegisters::new(
                vec![0; SKETCH_REGISTERS].into_boxed_slice(),
            )),
        };
        dense.merge(&sparse);
        assert_eq!(dense, sparse);
        assert_ne!(dense, sketch_of(0..4));
    }

    #[test]
    fn varint_length_matches_the_encoder() {
        for value in [0u64, 1, 127, 128, 16_383, 16_384, 1 << 20, u64::MAX] {
            let mut out = Vec::new();
            varint::put_u64(&mut out, value);
            assert_eq!(varint_length(value), out.len(), "{value}");
        }
    }

    #[test]
    fn a_dense_sketch_with_few_registers_encodes_sparse() {
        let mut dense = sketch_of(0..5_000);
        let few = sketch_of(0..3);
        // Build a dense sketch holding only three visitors by merging a dense empty-ish one.
        dense.registers = Registers::Dense(DenseRegisters::new(
            vec![0; SKETCH_REGISTERS].into_boxed_slice(),
        ));
        dense.merge(&few);
        assert_eq!(dense.to_bytes(), few.to_bytes());
    }

    #[test]
    fn rejects_malformed_sketches() {
        let cases: [&[u8]; 6] = [
            &[3],                         // unknown form
            &[TAG_SPARSE, 0],             // sparse with nothing in it
            &[TAG_SPARSE, 1, 0],          // rank 0
            &[TAG_SPARSE, 1, 0x3f],       // rank 63
            &[TAG_SPARSE, 2, 0x41, 0x01], // second index not increasing
            &[TAG_DENSE, 0, 0],           // truncated dense
        ];
        for bytes in cases {
            assert!(Sketch::from_bytes(bytes).is_err(), "{bytes:?} accepted");
        }
        // Register index 16384 is one past the end.
        let mut out = vec![TAG_SPARSE, 1];
        varint::put_u64(&mut out, (16_384 << 6) | 1);
        assert!(Sketch::from_bytes(&out).is_err());
    }
}
