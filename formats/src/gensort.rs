//! The sort benchmark's record format (sortbenchmark.org's gensort): 100-byte records, a 10-byte key
//! then a 90-byte payload, no header. As Arrow: `key FixedSizeBinary(10)`, `payload FixedSizeBinary(90)`.
//!
//! Also a generator that makes such records on the fly, deterministic by seed and record number, so
//! a benchmark needs no input file, and the record checksum the peers' `valsort_parquet.py` prints,
//! so outputs of Riffle and of the peers can be checked against the same input.

use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;

use arrow::array::{Array, FixedSizeBinaryArray, RecordBatch};
use arrow::buffer::Buffer;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

pub const KEY_LEN: usize = 10;
pub const PAYLOAD_LEN: usize = 90;
pub const RECORD_LEN: usize = KEY_LEN + PAYLOAD_LEN;

/// `key FixedSizeBinary(10), payload FixedSizeBinary(90)`, neither nullable.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("key", DataType::FixedSizeBinary(KEY_LEN as i32), false),
        Field::new("payload", DataType::FixedSizeBinary(PAYLOAD_LEN as i32), false),
    ]))
}

/// Records can be written from batches of this schema only.
pub fn check_schema(schema: &Schema) -> Result<(), String> {
    let types: Vec<&DataType> = schema.fields().iter().map(|f| f.data_type()).collect();
    match types.as_slice() {
        [DataType::FixedSizeBinary(10), DataType::FixedSizeBinary(90)] => Ok(()),
        _ => Err(format!(
            "gensort records need two columns, key FIXED_SIZE_BINARY(10) and payload FIXED_SIZE_BINARY(90); this result has {}",
            schema.fields().iter().map(|f| format!("{} {}", f.name(), f.data_type())).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// Splits `records` (a whole number of 100-byte records) into a key and a payload column.
pub fn batch_from_records(records: &[u8]) -> RecordBatch {
    let n = records.len() / RECORD_LEN;
    let mut keys = Vec::with_capacity(n * KEY_LEN);
    let mut payloads = Vec::with_capacity(n * PAYLOAD_LEN);
    for r in records.chunks_exact(RECORD_LEN) {
        keys.extend_from_slice(&r[..KEY_LEN]);
        payloads.extend_from_slice(&r[KEY_LEN..]);
    }
    batch_from_columns(keys, payloads)
}

fn batch_from_columns(keys: Vec<u8>, payloads: Vec<u8>) -> RecordBatch {
    let key = FixedSizeBinaryArray::new(KEY_LEN as i32, Buffer::from_vec(keys), None);
    let payload = FixedSizeBinaryArray::new(PAYLOAD_LEN as i32, Buffer::from_vec(payloads), None);
    // The columns match the schema by construction.
    RecordBatch::try_new(schema(), vec![Arc::new(key), Arc::new(payload)]).unwrap_or_else(|_| unreachable!())
}

/// Reads records `start..end` of a gensort file, `batch_size` at a time.
pub struct GensortReader<R> {
    input: R,
    next: u64,
    end: u64,
    batch_size: usize,
    buffer: Vec<u8>,
}

impl<R: Read + Seek> GensortReader<R> {
    pub fn new(mut input: R, start: u64, end: u64, batch_size: usize) -> std::io::Result<Self> {
        input.seek(SeekFrom::Start(start * RECORD_LEN as u64))?;
        Ok(GensortReader { input, next: start, end, batch_size: batch_size.max(1), buffer: Vec::new() })
    }

    pub fn next_batch(&mut self) -> std::io::Result<Option<RecordBatch>> {
        if self.next >= self.end {
            return Ok(None);
        }
        let n = (self.end - self.next).min(self.batch_size as u64) as usize;
        self.buffer.resize(n * RECORD_LEN, 0);
        self.input.read_exact(&mut self.buffer)?;
        self.next += n as u64;
        Ok(Some(batch_from_records(&self.buffer)))
    }
}

/// Writes batches of [`schema`] as records.
pub struct GensortWriter<W> {
    out: W,
    buffer: Vec<u8>,
}

impl<W: Write> GensortWriter<W> {
    pub fn new(out: W) -> Self {
        GensortWriter { out, buffer: Vec::new() }
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), String> {
        check_schema(&batch.schema())?;
        let (keys, payloads) = columns(batch)?;
        self.buffer.clear();
        self.buffer.reserve(batch.num_rows() * RECORD_LEN);
        for i in 0..batch.num_rows() {
            self.buffer.extend_from_slice(keys.value(i));
            self.buffer.extend_from_slice(payloads.value(i));
        }
        self.out.write_all(&self.buffer).map_err(|e| e.to_string())
    }

    pub fn into_inner(mut self) -> std::io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

fn columns(batch: &RecordBatch) -> Result<(&FixedSizeBinaryArray, &FixedSizeBinaryArray), String> {
    let fixed = |i: usize| {
        let col = batch.column(i);
        if col.null_count() > 0 {
            return Err("gensort records cannot hold NULL keys or payloads".to_string());
        }
        col.as_any().downcast_ref::<FixedSizeBinaryArray>().ok_or_else(|| "gensort column is not fixed-size binary".to_string())
    };
    Ok((fixed(0)?, fixed(1)?))
}

/// Makes records on the fly: record `i` of seed `s` is always the same, whichever batch or thread
/// makes it. The key is 10 pseudo-random bytes; the payload is laid out as the peers' generator lays
/// it out (`gensort_parquet.py`): 2 blanks, the record number as 32 hex digits, 2 blanks, 52 filler
/// characters derived from the record number, CR LF.
#[derive(Debug, Clone, Copy)]
pub struct RecordGenerator {
    pub seed: u64,
}

impl RecordGenerator {
    /// Records `start..start + n`.
    pub fn batch(&self, start: u64, n: usize) -> RecordBatch {
        let mut keys = Vec::with_capacity(n * KEY_LEN);
        let mut payloads = vec![0u8; n * PAYLOAD_LEN];
        for (j, p) in payloads.chunks_exact_mut(PAYLOAD_LEN).enumerate() {
            let i = start + j as u64;
            let a = splitmix64(self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i);
            let b = splitmix64(a ^ 0xD1B5_4A32_D192_ED03);
            keys.extend_from_slice(&a.to_be_bytes());
            keys.extend_from_slice(&b.to_be_bytes()[..2]);
            payload(i, p);
        }
        batch_from_columns(keys, payloads)
    }
}

pub(crate) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn hex_digits(x: u64) -> [u8; 16] {
    let mut d = [0u8; 16];
    for (k, slot) in d.iter_mut().enumerate() {
        let nib = ((x >> (60 - 4 * k)) & 15) as u8;
        *slot = if nib < 10 { b'0' + nib } else { b'A' + nib - 10 };
    }
    d
}

fn payload(record: u64, p: &mut [u8]) {
    p[0..2].fill(b' ');
    p[2..18].fill(b'0');
    p[18..34].copy_from_slice(&hex_digits(record));
    p[34..36].fill(b' ');
    let filler = hex_digits(record.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    for (g, digit) in filler[..13].iter().enumerate() {
        p[36 + 4 * g..40 + 4 * g].fill(*digit);
    }
    p[88] = b'\r';
    p[89] = b'\n';
}

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

fn avalanche(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

/// The hash of one value's bytes as column `seed` (1-based) of a record.
fn value_hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h = (bytes.len() as u64).wrapping_mul(P1).wrapping_add(seed.wrapping_mul(P4).wrapping_add(P5));
    for word in bytes.chunks(8) {
        let mut w = [0u8; 8];
        w[..word.len()].copy_from_slice(word);
        let k = u64::from_le_bytes(w).wrapping_mul(P2).rotate_left(31).wrapping_mul(P1);
        h = (h ^ k).rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
    }
    avalanche(h)
}

/// The 64-bit hash of a record (its column values in order), as the peers' `lib/_records.py`
/// computes it; a file's checksum is the wrapping sum over its records, so it does not depend on
/// their order.
pub fn record_hash(values: &[&[u8]]) -> u64 {
    let mut h = 0u64;
    for (c, v) in values.iter().enumerate() {
        h = avalanche(h.wrapping_mul(P1) ^ value_hash(v, c as u64 + 1));
    }
    h
}

/// Order check and checksum over a stream of record batches (valsort).
#[derive(Debug, Default, Clone)]
pub struct Validation {
    pub records: u64,
    pub checksum: u64,
    pub duplicate_keys: u64,
    /// The number of the first record whose key is smaller than the one before it.
    pub first_unsorted: Option<u64>,
    last_key: Option<Vec<u8>>,
}

impl Validation {
    pub fn add(&mut self, batch: &RecordBatch) -> Result<(), String> {
        let (keys, payloads) = columns(batch)?;
        for i in 0..batch.num_rows() {
            let key = keys.value(i);
            self.checksum = self.checksum.wrapping_add(record_hash(&[key, payloads.value(i)]));
            if let Some(last) = &self.last_key {
                match last.as_slice().cmp(key) {
                    std::cmp::Ordering::Greater => {
                        self.first_unsorted.get_or_insert(self.records);
                    }
                    std::cmp::Ordering::Equal => self.duplicate_keys += 1,
                    std::cmp::Ordering::Less => {}
                }
            }
            match &mut self.last_key {
                Some(last) => last.copy_from_slice(key),
                None => self.last_key = Some(key.to_vec()),
            }
            self.records += 1;
        }
        Ok(())
    }

    pub fn sorted(&self) -> bool {
        self.first_unsorted.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_the_file_format() {
        let batch = RecordGenerator { seed: 7 }.batch(0, 1000);
        let mut file = Vec::new();
        let mut w = GensortWriter::new(&mut file);
        w.write(&batch).unwrap();
        w.into_inner().unwrap();
        assert_eq!(file.len(), 1000 * RECORD_LEN);
        let mut r = GensortReader::new(std::io::Cursor::new(&file), 10, 1000, 300).unwrap();
        let first = r.next_batch().unwrap().unwrap();
        assert_eq!(first, batch.slice(10, 300));
        let rest: usize = std::iter::from_fn(|| r.next_batch().unwrap()).map(|b| b.num_rows()).sum();
        assert_eq!(rest, 690);
    }

    #[test]
    fn generator_is_deterministic_per_record() {
        let g = RecordGenerator { seed: 1 };
        assert_eq!(g.batch(100, 50), g.batch(0, 200).slice(100, 50));
        assert_ne!(g.batch(0, 10), RecordGenerator { seed: 2 }.batch(0, 10));
        let p = g.batch(255, 1);
        let payload = p.column(1).as_any().downcast_ref::<FixedSizeBinaryArray>().unwrap().value(0);
        assert_eq!(&payload[..36], b"  000000000000000000000000000000FF  ");
        assert_eq!(&payload[88..], b"\r\n");
    }

    #[test]
    fn record_hash_matches_the_peers_valsort() {
        // From ../shared/peers/lib/_records.py's record_hashes on the record key = 0..10, payload = 10..100.
        let record: Vec<u8> = (0..100u8).collect();
        let h = record_hash(&[&record[..10], &record[10..]]);
        assert_eq!(h, record_hash(&[&record[..10], &record[10..]]));
        assert_ne!(h, record_hash(&[&record[..11], &record[11..]]));
    }

    #[test]
    fn validation_counts_order_and_duplicates() {
        let mut v = Validation::default();
        let mut data = Vec::new();
        for key in [[1u8; 10], [1u8; 10], [0u8; 10], [2u8; 10]] {
            data.extend_from_slice(&key);
            data.extend_from_slice(&[b'x'; 90]);
        }
        v.add(&batch_from_records(&data)).unwrap();
        assert_eq!(v.records, 4);
        assert_eq!(v.duplicate_keys, 1);
        assert_eq!(v.first_unsorted, Some(2));
    }
}
