//! Group keys of strings and integers (TPC-DS's `GROUP BY i_category, i_brand, s_store_name, d_year,
//! d_moy`), or of integers and decimals too many to pack into 128 bits, each key a fixed number of
//! 64-bit words: a string's id in its column's `Interner`, an integer's (or a decimal's unscaled)
//! value, then one word of the integers' NULL flags. A lookup hashes and compares a few
//! words instead of encoding every row's strings (arrow-row's blocks make a 20-byte brand 28 bytes)
//! and comparing bytes.
//!
//! Strings a join hands out dictionary-encoded (its build side's column, keyed by build row:
//! `crate::physical::dictionary_join_outputs`) are interned once per dictionary, not once per row:
//! each row's id is then its dictionary key's.

use std::hash::BuildHasher;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, StringArray};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Decimal128Type, Int32Type, Int64Type};
use arrow::row::{RowConverter, SortField};
use hashbrown::{DefaultHashBuilder, HashTable};

use super::group_keys::{find_or_insert, hash_int, int_like};
use crate::error::{Result, RiffleError};

/// A NULL string's word.
const NULL_ID: u64 = u64::MAX;

pub(super) struct CodedKeys {
    columns: Vec<CodedColumn>,
    /// Words per group: one per key, then the integer keys' NULL flags if there are integer keys.
    stride: usize,
    /// Group ids, found by comparing a row's words with the group's in `words`.
    map: HashTable<u32>,
    /// Each group's hash, to move the groups when the map grows.
    hashes: Vec<u64>,
    /// Group g's key is `words[g * stride..(g + 1) * stride]`.
    words: Vec<u64>,
    /// To split groups into spill buckets exactly as their keys' rows would be.
    converter: RowConverter,
}

enum CodedColumn {
    Text(Interner),
    Int(DataType),
}

/// Keys of these types can be coded: each a string, integer-like, or a decimal whose values fit in
/// 64 bits (TPC-DS q75's `sales_amt` among five integer ids: past 128 bits, so not packed).
pub(super) fn codable(types: &[DataType]) -> bool {
    types.iter().all(|t| *t == DataType::Utf8 || word_like(t))
}

/// Whether a key of this type is held losslessly in one 64-bit word.
fn word_like(t: &DataType) -> bool {
    int_like(t) || matches!(t, DataType::Decimal128(p, _) if *p <= 18)
}

/// A word-like key's values as i64 (a decimal's unscaled values).
fn as_words(key: &ArrayRef) -> Result<ArrayRef> {
    Ok(match key.data_type() {
        DataType::Decimal128(..) => Arc::new(key.as_primitive::<Decimal128Type>().unary::<_, Int64Type>(|v| v as i64)),
        _ => arrow::compute::cast(key, &DataType::Int64)?,
    })
}

/// Words back as keys of `data_type` (`as_words` undone).
fn from_words(words: Int64Array, data_type: &DataType) -> Result<ArrayRef> {
    Ok(match data_type {
        DataType::Int64 => Arc::new(words),
        DataType::Decimal128(p, s) => Arc::new(words.unary::<_, Decimal128Type>(|v| v as i128).with_precision_and_scale(*p, *s)?),
        _ => arrow::compute::cast(&words, data_type)?,
    })
}

impl CodedKeys {
    pub(super) fn new(types: &[DataType]) -> Result<CodedKeys> {
        let columns: Vec<CodedColumn> =
            types.iter().map(|t| if *t == DataType::Utf8 { CodedColumn::Text(Interner::default()) } else { CodedColumn::Int(t.clone()) }).collect();
        let has_int = columns.iter().any(|c| matches!(c, CodedColumn::Int(_)));
        let converter = RowConverter::new(types.iter().map(|t| SortField::new(t.clone())).collect())?;
        Ok(CodedKeys { stride: columns.len() + usize::from(has_int), columns, map: HashTable::new(), hashes: vec![], words: vec![], converter })
    }

    pub(super) fn len(&self) -> usize {
        self.hashes.len()
    }

    /// The group of every row of `keys` (strings plain or dictionary-encoded), adding the new ones.
    pub(super) fn groups(&mut self, keys: &[ArrayRef], rows: usize) -> Result<Vec<u32>> {
        let stride = self.stride;
        let mut words = vec![0u64; rows * stride];
        for (c, (column, key)) in self.columns.iter_mut().zip(keys).enumerate() {
            match column {
                CodedColumn::Text(interner) => {
                    let ids = interner.ids(key)?;
                    for (row, id) in ids.into_iter().enumerate() {
                        words[row * stride + c] = id;
                    }
                }
                CodedColumn::Int(_) => {
                    let wide = as_words(key)?;
                    let wide = wide.as_primitive::<Int64Type>();
                    for (row, v) in wide.values().iter().enumerate() {
                        words[row * stride + c] = *v as u64;
                    }
                    if let Some(nulls) = wide.nulls().filter(|n| n.null_count() > 0) {
                        for row in (0..rows).filter(|r| nulls.is_null(*r)) {
                            words[row * stride + c] = 0;
                            words[row * stride + stride - 1] |= 1 << c;
                        }
                    }
                }
            }
        }
        let mut groups = Vec::with_capacity(rows);
        let mut previous: Option<(usize, u32)> = None;
        for row in 0..rows {
            let key = &words[row * stride..(row + 1) * stride];
            // Runs of equal keys are common (sorted or clustered input): skip the hash lookup.
            if let Some((p, g)) = previous {
                if same_words(&words[p * stride..(p + 1) * stride], key) {
                    groups.push(g);
                    continue;
                }
            }
            let g = find_or_insert(
                (&mut self.map, &mut self.hashes, &mut self.words),
                hash_words(key),
                |stored, g| same_words(&stored[g as usize * stride..(g as usize + 1) * stride], key),
                |stored| stored.extend_from_slice(key),
            );
            groups.push(g);
            previous = Some((row, g));
        }
        Ok(groups)
    }

    pub(super) fn reserve(&mut self, n: usize) {
        let hashes = &self.hashes;
        self.map.reserve(n, |&g| hashes[g as usize]);
        self.hashes.reserve(n);
        self.words.reserve(n * self.stride);
    }

    /// The keys of `groups` as arrays of the keys' types.
    pub(super) fn arrays_of(&self, groups: impl Iterator<Item = u32> + Clone) -> Result<Vec<ArrayRef>> {
        let stride = self.stride;
        let word = |g: u32, c: usize| self.words[g as usize * stride + c];
        self.columns
            .iter()
            .enumerate()
            .map(|(c, column)| {
                Ok(match column {
                    CodedColumn::Text(interner) => {
                        let strings: StringArray = groups.clone().map(|g| interner.get(word(g, c))).collect();
                        Arc::new(strings) as ArrayRef
                    }
                    CodedColumn::Int(data_type) => {
                        let values: Vec<i64> = groups.clone().map(|g| word(g, c) as i64).collect();
                        let valid = NullBuffer::from_iter(groups.clone().map(|g| word(g, stride - 1) & (1 << c) == 0));
                        from_words(Int64Array::new(values.into(), (valid.null_count() > 0).then_some(valid)), data_type)?
                    }
                })
            })
            .collect()
    }

    /// Every group's keys; the table's are dropped.
    pub(super) fn take_arrays(&mut self) -> Result<Vec<ArrayRef>> {
        let arrays = self.arrays_of(0..self.len() as u32)?;
        self.map = HashTable::new();
        self.hashes = vec![];
        self.words = vec![];
        Ok(arrays)
    }

    /// Bytes held.
    pub(super) fn size(&self) -> usize {
        // The map: a 4-byte id and a control byte per slot; each group's hash and words.
        let table = self.map.capacity() * 5 + self.hashes.capacity() * 8 + self.words.capacity() * 8;
        table + self.columns.iter().map(|c| if let CodedColumn::Text(i) = c { i.size() } else { 0 }).sum::<usize>()
    }

    pub(super) fn converter(&self) -> &RowConverter {
        &self.converter
    }
}

/// Whether two keys' words are equal, in one pass without an early exit: kept inline, where a slice
/// `==` of a length known only at run time calls memcmp (13% of TPC-DS q57's time).
#[inline]
fn same_words(a: &[u64], b: &[u64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |d, (x, y)| d | (x ^ y)) == 0
}

/// A hash of a key's words: each folded in with a multiply, then mixed as an integer key is.
#[inline]
fn hash_words(words: &[u64]) -> u64 {
    let mut h = 0u64;
    for w in words {
        h = (h.rotate_left(23) ^ w).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    hash_int(h as i64)
}

/// A column's distinct strings, each with its id (its place in order of first sight).
#[derive(Default)]
struct Interner {
    map: HashTable<u32>,
    hashes: Vec<u64>,
    /// String i is `bytes[offsets[i]..offsets[i + 1]]`.
    offsets: Vec<usize>,
    bytes: Vec<u8>,
    hasher: DefaultHashBuilder,
    /// The ids of the values of recently seen dictionaries (a join's build side column), by the
    /// values array, kept alive here so that the pointer compared is never another array's.
    dictionaries: Vec<(ArrayRef, Vec<u64>)>,
    /// The values of the last dictionary met and not interned: a second batch with the same values
    /// has them interned (one batch's rows are fewer than a build side's strings).
    last_missed: Option<ArrayRef>,
}

impl Interner {
    /// Dictionaries whose values' ids are kept.
    const DICTIONARIES: usize = 8;

    fn string(&self, id: usize) -> &[u8] {
        &self.bytes[self.offsets[id]..self.offsets[id + 1]]
    }

    fn get(&self, id: u64) -> Option<&str> {
        // Only whole strings of valid UTF-8 are stored.
        (id != NULL_ID).then(|| std::str::from_utf8(self.string(id as usize)).unwrap_or_default())
    }

    fn intern(&mut self, s: &[u8]) -> u64 {
        if self.offsets.is_empty() {
            self.offsets.push(0);
        }
        let hash = self.hasher.hash_one(s);
        let id = find_or_insert(
            (&mut self.map, &mut self.hashes, &mut (&mut self.offsets, &mut self.bytes)),
            hash,
            |(offsets, bytes), id| &bytes[offsets[id as usize]..offsets[id as usize + 1]] == s,
            |(offsets, bytes)| {
                bytes.extend_from_slice(s);
                offsets.push(bytes.len());
            },
        );
        id as u64
    }

    /// The id of every row's string.
    fn ids(&mut self, key: &ArrayRef) -> Result<Vec<u64>> {
        match key.data_type() {
            DataType::Utf8 => Ok(self.ids_of_strings(key.as_string::<i32>())),
            DataType::Dictionary(k, v) if **k == DataType::Int32 && **v == DataType::Utf8 => {
                let dict = key.as_dictionary::<Int32Type>();
                let Some(of_value) = self.dictionary_ids(dict.values(), dict.len()) else {
                    return Ok(self.ids_of_strings(arrow::compute::cast(key, &DataType::Utf8)?.as_string::<i32>()));
                };
                let keys = dict.keys();
                Ok(keys
                    .values()
                    .iter()
                    .enumerate()
                    .map(|(row, k)| if keys.is_null(row) { NULL_ID } else { of_value.get(*k as usize).copied().unwrap_or(NULL_ID) })
                    .collect())
            }
            DataType::Dictionary(_, v) if **v == DataType::Utf8 => {
                Ok(self.ids_of_strings(arrow::compute::cast(key, &DataType::Utf8)?.as_string::<i32>()))
            }
            other => Err(RiffleError::exec(format!("a coded group key of type {other} is no string"))),
        }
    }

    fn ids_of_strings(&mut self, strings: &arrow::array::StringArray) -> Vec<u64> {
        let mut ids = Vec::with_capacity(strings.len());
        let mut previous: Option<(&[u8], u64)> = None;
        for s in strings.iter() {
            let Some(s) = s.map(str::as_bytes) else {
                ids.push(NULL_ID);
                continue;
            };
            let id = match previous {
                Some((p, id)) if p == s => id,
                _ => self.intern(s),
            };
            ids.push(id);
            previous = Some((s, id));
        }
        ids
    }

    /// The ids of a dictionary's values, interned now if they are few next to the batch's rows or
    /// were met in the batch before; `None`: intern the rows' strings instead.
    fn dictionary_ids(&mut self, values: &ArrayRef, rows: usize) -> Option<&[u64]> {
        let same = |a: &ArrayRef| std::ptr::addr_eq(Arc::as_ptr(a), Arc::as_ptr(values));
        if let Some(i) = self.dictionaries.iter().position(|(v, _)| same(v)) {
            return Some(&self.dictionaries[i].1);
        }
        let again = self.last_missed.as_ref().is_some_and(same);
        if !again && values.len() > rows {
            self.last_missed = Some(values.clone());
            return None;
        }
        let strings = values.as_string_opt::<i32>()?;
        let ids = self.ids_of_strings(strings);
        if self.dictionaries.len() == Self::DICTIONARIES {
            self.dictionaries.remove(0);
        }
        self.dictionaries.push((values.clone(), ids));
        self.dictionaries.last().map(|(_, ids)| &ids[..])
    }

    fn size(&self) -> usize {
        let dictionaries: usize = self.dictionaries.iter().map(|(_, ids)| ids.capacity() * 8).sum();
        self.map.capacity() * 5 + self.hashes.capacity() * 8 + self.offsets.capacity() * 8 + self.bytes.capacity() + dictionaries
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{DictionaryArray, Int32Array};

    #[test]
    fn strings_plain_or_dictionary_encoded_and_integers_group_as_their_values() {
        let values: ArrayRef = Arc::new(StringArray::from(vec![Some("toys"), Some("books"), None, Some("toys"), Some("music")]));
        let types = [DataType::Utf8, DataType::Int32];
        let mut keys = CodedKeys::new(&types).expect("keys");
        let years: ArrayRef = Arc::new(Int32Array::from(vec![Some(1999), Some(1999), None, Some(2000), Some(1999), None]));
        // Dictionary keys 0 and 3 are both "toys"; 2 is a NULL value; row 4's key is NULL.
        let dict = |k: Vec<Option<i32>>| -> ArrayRef { Arc::new(DictionaryArray::<Int32Type>::try_new(Int32Array::from(k), values.clone()).expect("dict")) };
        let first = dict(vec![Some(0), Some(3), Some(2), Some(0), None, Some(2)]);
        // Met twice: the second time the values are interned once.
        let mut seen = vec![];
        for _ in 0..3 {
            seen.push(keys.groups(&[first.clone(), years.clone()], 6).expect("groups"));
        }
        assert_eq!(seen[0], vec![0, 0, 1, 2, 3, 1]);
        assert!(seen.iter().all(|g| *g == seen[0]));
        let plain: ArrayRef = Arc::new(StringArray::from(vec![Some("toys"), None, Some("toys"), Some("books")]));
        let plain_years: ArrayRef = Arc::new(Int32Array::from(vec![Some(2000), None, Some(1999), Some(2000)]));
        assert_eq!(keys.groups(&[plain, plain_years], 4).expect("plain"), vec![2, 1, 0, 4]);
        let arrays = keys.take_arrays().expect("arrays");
        let expected_strings: ArrayRef = Arc::new(StringArray::from(vec![Some("toys"), None, Some("toys"), None, Some("books")]));
        let expected_years: ArrayRef = Arc::new(Int32Array::from(vec![Some(1999), None, Some(2000), Some(1999), Some(2000)]));
        assert_eq!(arrays[0].as_ref(), expected_strings.as_ref());
        assert_eq!(arrays[1].as_ref(), expected_years.as_ref());
        assert!(codable(&types) && codable(&[DataType::Int32, DataType::Decimal128(18, 2)]));
        assert!(!codable(&[DataType::Utf8, DataType::Float64]) && !codable(&[DataType::Int32, DataType::Decimal128(19, 2)]));
    }
}
