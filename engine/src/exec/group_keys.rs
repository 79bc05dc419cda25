//! How a group table (`aggregate::GroupTable`) finds the group of each row from its key values, and
//! gives the groups' keys back as arrays.
//!
//! Keys in general are encoded as rows (arrow-row) and stored once each; the hash map holds group ids,
//! and a lookup compares the row's bytes with the stored key's. A single integer-like key (integers,
//! dates, timestamps: most GROUP BY keys of TPC-H, TPC-DS and Nexmark) is held as an i64 beside its
//! group id in the map itself. In a table larger than the caches, a lookup costs its cache misses:
//! one slot here, against the slot, the stored key's offsets and its bytes for rows.

use std::hash::BuildHasher;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use arrow::buffer::NullBuffer;
use arrow::datatypes::{DataType, Int64Type};
use arrow::row::{RowConverter, Rows, SortField};
use hashbrown::{DefaultHashBuilder, HashTable};

use super::aggregate::bucket_of;
use super::coded_keys::{codable, CodedKeys};
use crate::error::Result;

pub(super) enum GroupKeys {
    /// No GROUP BY: every row is in the one group.
    None,
    Rows(RowKeys),
    Int(IntKeys),
    Packed(PackedKeys),
    Coded(CodedKeys),
}

pub(super) struct RowKeys {
    converter: RowConverter,
    /// Group ids, found by comparing a row's key with the group's key in `keys` (no key is stored
    /// twice, and a new group allocates nothing of its own).
    map: HashTable<u32>,
    /// Each group's key hash, to move the groups when the map grows.
    hashes: Vec<u64>,
    hasher: DefaultHashBuilder,
    keys: Rows,
}

pub(super) struct IntKeys {
    data_type: DataType,
    /// Each group's key and id (empty while `ascending`).
    map: HashTable<(i64, u32)>,
    /// Each group's key, by id (the NULL group's is 0).
    values: Vec<i64>,
    /// The group of the NULL key, once a row had it.
    null_group: Option<u32>,
    /// While every key has come at or above the key before it, none NULL (input sorted by the key,
    /// as TPC-H's lineitem by l_orderkey): a key is then the last group's (`values`' last) or a new
    /// one, so no key is looked up, nor hashed into `map`, until one comes below the last.
    ascending: bool,
    /// Whether `map` holds every group (but the NULL one). It does not while `ascending`, nor after
    /// a batch of ascending keys was merged with the ascending groups (see `merged_groups`): it is
    /// built when a key is next looked up.
    indexed: bool,
    /// To split groups into spill buckets exactly as their keys' rows would be.
    converter: RowConverter,
}

/// Several integer-like keys whose values and NULL flags fit in 128 bits together (TPC-DS's
/// surrogate keys and ids: `(ss_item_sk, ss_customer_sk)`, `(i_brand_id, i_class_id, i_category_id)`):
/// a group's keys are one u128 beside its id in the map, hashed and compared as a number rather than
/// encoded as a row and compared byte by byte.
pub(super) struct PackedKeys {
    packing: KeyPacking,
    /// Each group's packed keys and id.
    map: HashTable<(u128, u32)>,
    /// Each group's packed keys, by id.
    values: Vec<u128>,
    /// To split groups into spill buckets exactly as their keys' rows would be.
    converter: RowConverter,
}

/// How several integer-like keys are packed into one u128 (the first key in the highest bits).
pub(super) struct KeyPacking {
    columns: Vec<PackedColumn>,
}

/// Where one key sits in a packed u128: its value's low `bits` bits, the validity bit above them,
/// `shift` bits from the bottom.
struct PackedColumn {
    data_type: DataType,
    bits: u32,
    signed: bool,
    shift: u32,
}

/// Bits of a key of this type in a packed key, and whether its values are signed; None for types
/// not held as integers.
fn packed_width(t: &DataType) -> Option<(u32, bool)> {
    use DataType::*;
    Some(match t {
        Int8 => (8, true),
        UInt8 => (8, false),
        Int16 => (16, true),
        UInt16 => (16, false),
        Int32 | Date32 => (32, true),
        UInt32 => (32, false),
        Int64 | Date64 | Timestamp(_, _) => (64, true),
        _ => return None,
    })
}

/// Whether a single key of this type is held as an i64 (`IntKeys`): a lossless round trip.
pub(super) fn int_like(t: &DataType) -> bool {
    packed_width(t).is_some()
}

/// A hash of an i64 key: a folded 128-bit multiply, so that both the low bits (the bucket) and the
/// high ones (the map's tag) depend on every bit of the key.
#[inline]
pub(super) fn hash_int(v: i64) -> u64 {
    let p = (v as u64 as u128).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835);
    (p as u64) ^ ((p >> 64) as u64)
}

impl GroupKeys {
    /// The table for keys of `types`; string keys `coded` where they come dictionary-encoded.
    pub(super) fn new(types: Vec<DataType>, coded: bool) -> Result<GroupKeys> {
        if types.is_empty() {
            return Ok(GroupKeys::None);
        }
        if let [t] = types.as_slice() {
            if int_like(t) {
                let converter = RowConverter::new(vec![SortField::new(t.clone())])?;
                return Ok(GroupKeys::Int(IntKeys {
                    data_type: t.clone(),
                    map: HashTable::new(),
                    values: vec![],
                    null_group: None,
                    ascending: true,
                    indexed: false,
                    converter,
                }));
            }
        }
        if let Some(packed) = PackedKeys::new(&types)? {
            return Ok(GroupKeys::Packed(packed));
        }
        // Strings are coded when they come dictionary-encoded (interning every row's string costs
        // more than encoding it); integers and decimals past 128 bits always are.
        if codable(&types) && (coded || !types.contains(&DataType::Utf8)) {
            return Ok(GroupKeys::Coded(CodedKeys::new(&types)?));
        }
        GroupKeys::row_encoded(types)
    }

    /// Keys of any types, encoded as rows.
    fn row_encoded(types: Vec<DataType>) -> Result<GroupKeys> {
        let converter = RowConverter::new(types.into_iter().map(SortField::new).collect())?;
        let keys = converter.empty_rows(0, 0);
        Ok(GroupKeys::Rows(RowKeys { converter, map: HashTable::new(), hashes: vec![], hasher: DefaultHashBuilder::default(), keys }))
    }

    /// The number of groups (one without GROUP BY).
    pub(super) fn len(&self) -> usize {
        match self {
            GroupKeys::None => 1,
            GroupKeys::Rows(r) => r.keys.num_rows(),
            GroupKeys::Int(i) => i.values.len(),
            GroupKeys::Packed(p) => p.values.len(),
            GroupKeys::Coded(c) => c.len(),
        }
    }

    /// Whether `groups` takes dictionary-encoded keys as they are.
    pub(super) fn takes_dictionaries(&self) -> bool {
        matches!(self, GroupKeys::Coded(_))
    }

    /// The group of every row of `keys` (plain arrays; dictionaries where `takes_dictionaries`),
    /// adding the new ones.
    pub(super) fn groups(&mut self, keys: &[ArrayRef], rows: usize) -> Result<Vec<u32>> {
        match self {
            GroupKeys::None => Ok(vec![0; rows]),
            GroupKeys::Rows(r) => r.groups(keys, rows),
            GroupKeys::Int(i) => i.groups(&keys[0]),
            GroupKeys::Packed(p) => p.groups(keys, rows),
            GroupKeys::Coded(c) => c.groups(keys, rows),
        }
    }

    /// Room for `n` more groups at once, rather than growing the map step by step.
    pub(super) fn reserve(&mut self, n: usize) {
        match self {
            GroupKeys::None => {}
            GroupKeys::Rows(r) => {
                let hashes = &r.hashes;
                r.map.reserve(n, |&g| hashes[g as usize]);
                r.hashes.reserve(n);
            }
            GroupKeys::Int(i) => {
                if i.indexed {
                    i.map.reserve(n, |&(k, _)| hash_int(k));
                }
                i.values.reserve(n);
            }
            GroupKeys::Packed(p) => {
                p.map.reserve(n, |&(k, _)| hash_packed(k));
                p.values.reserve(n);
            }
            GroupKeys::Coded(c) => c.reserve(n),
        }
    }

    /// Every group's key as arrays, in group order; the keys are taken out (the table is finished).
    pub(super) fn take_arrays(&mut self) -> Result<Vec<ArrayRef>> {
        match self {
            GroupKeys::None => Ok(vec![]),
            GroupKeys::Rows(r) => {
                let rows = std::mem::replace(&mut r.keys, r.converter.empty_rows(0, 0));
                Ok(r.converter.convert_rows(&rows)?)
            }
            GroupKeys::Int(i) => {
                let values = std::mem::take(&mut i.values);
                Ok(vec![i.array(values)?])
            }
            GroupKeys::Packed(p) => {
                let values = std::mem::take(&mut p.values);
                p.arrays(values.into_iter())
            }
            GroupKeys::Coded(c) => c.take_arrays(),
        }
    }

    /// The keys of `groups` as arrays, the table kept.
    pub(super) fn arrays_of(&self, groups: &[u32]) -> Result<Vec<ArrayRef>> {
        match self {
            GroupKeys::None => Ok(vec![]),
            GroupKeys::Rows(r) => Ok(r.converter.convert_rows(groups.iter().map(|g| r.keys.row(*g as usize)))?),
            GroupKeys::Int(i) => {
                let null = i.null_group;
                let values: Vec<i64> = groups.iter().map(|g| i.values[*g as usize]).collect();
                let nulls = null.map(|n| groups.iter().map(|g| *g != n).collect::<NullBuffer>());
                Ok(vec![i.array_with(values, nulls)?])
            }
            GroupKeys::Packed(p) => p.arrays(groups.iter().map(|g| p.values[*g as usize])),
            GroupKeys::Coded(c) => c.arrays_of(groups.iter().copied()),
        }
    }

    /// Bytes held.
    pub(super) fn size(&self) -> usize {
        match self {
            GroupKeys::None => 0,
            // The map: a 4-byte id and a control byte per slot; each group's hash.
            GroupKeys::Rows(r) => r.keys.size() + r.map.capacity() * 5 + r.hashes.capacity() * 8,
            // The map: a 16-byte slot and a control byte each; each group's key.
            GroupKeys::Int(i) => i.map.capacity() * 17 + i.values.capacity() * 8,
            // The map: a 32-byte slot and a control byte each; each group's keys.
            GroupKeys::Packed(p) => p.map.capacity() * 33 + p.values.capacity() * 16,
            GroupKeys::Coded(c) => c.size(),
        }
    }

    /// The spill bucket at split `depth` of every group, in group order.
    pub(super) fn buckets(&self, depth: usize) -> Result<Vec<usize>> {
        match self {
            GroupKeys::None => Ok(vec![0; self.len()]),
            GroupKeys::Rows(r) => Ok(r.keys.iter().map(|k| bucket_of(k.as_ref(), depth)).collect()),
            GroupKeys::Int(_) | GroupKeys::Packed(_) | GroupKeys::Coded(_) => {
                let all: Vec<u32> = (0..self.len() as u32).collect();
                self.buckets_of(&self.arrays_of(&all)?, self.len(), depth)
            }
        }
    }

    /// The spill bucket at split `depth` of every row of `keys` (as `buckets` gives a group's).
    pub(super) fn buckets_of(&self, keys: &[ArrayRef], rows: usize, depth: usize) -> Result<Vec<usize>> {
        let converter = match self {
            GroupKeys::None => return Ok(vec![0; rows]),
            GroupKeys::Rows(r) => &r.converter,
            GroupKeys::Int(i) => &i.converter,
            GroupKeys::Packed(p) => &p.converter,
            GroupKeys::Coded(c) => c.converter(),
        };
        Ok(converter.convert_columns(keys)?.iter().map(|k| bucket_of(k.as_ref(), depth)).collect())
    }
}

impl RowKeys {
    fn groups(&mut self, keys: &[ArrayRef], rows: usize) -> Result<Vec<u32>> {
        let encoded = self.converter.convert_columns(keys)?;
        let mut groups = Vec::with_capacity(rows);
        let mut previous: Option<(arrow::row::Row<'_>, u32)> = None;
        for row in encoded.iter() {
            // Runs of equal keys are common (sorted or clustered input): skip the hash lookup.
            if let Some((p, g)) = previous {
                if super::same_key(p.as_ref(), row.as_ref()) {
                    groups.push(g);
                    continue;
                }
            }
            let hash = self.hasher.hash_one(row.as_ref());
            let g = find_or_insert(
                (&mut self.map, &mut self.hashes, &mut self.keys),
                hash,
                |stored, g| super::same_key(stored.row(g as usize).as_ref(), row.as_ref()),
                |stored| stored.push(row),
            );
            groups.push(g);
            previous = Some((row, g));
        }
        Ok(groups)
    }
}

/// The id `eq` finds among the ids in `map` (each hashed as `hashes` says), or the next id, its key
/// stored by `push`: a table whose keys are stored apart from it.
#[inline]
pub(super) fn find_or_insert<S>(
    (map, hashes, stored): (&mut HashTable<u32>, &mut Vec<u64>, &mut S),
    hash: u64,
    eq: impl Fn(&S, u32) -> bool,
    push: impl FnOnce(&mut S),
) -> u32 {
    if let Some(&id) = map.find(hash, |&id| eq(stored, id)) {
        return id;
    }
    let id = hashes.len() as u32;
    push(stored);
    hashes.push(hash);
    map.insert_unique(hash, id, |&k| hashes[k as usize]);
    id
}

impl IntKeys {
    fn groups(&mut self, keys: &ArrayRef) -> Result<Vec<u32>> {
        let wide = arrow::compute::cast(keys, &DataType::Int64)?;
        let wide = wide.as_primitive::<Int64Type>();
        if wide.is_empty() {
            return Ok(vec![]);
        }
        if self.ascending {
            if let Some(groups) = self.ascending_groups(wide) {
                return Ok(groups);
            }
            // A key below the last (or a NULL): keys are looked up from now on, unless this batch
            // ascends on its own (another partition's groups of sorted input, merged).
            self.ascending = false;
            if let Some(groups) = self.merged_groups(wide) {
                return Ok(groups);
            }
        }
        if !self.indexed {
            // Every group so far (none NULL) goes into the map.
            self.map.reserve(self.values.len() + wide.len(), |&(k, _)| hash_int(k));
            for (g, &k) in self.values.iter().enumerate() {
                self.map.insert_unique(hash_int(k), (k, g as u32), |&(stored, _)| hash_int(stored));
            }
            self.indexed = true;
        }
        Ok(groups_by_value(&mut self.map, &mut self.values, &mut self.null_group, hash_int, wide.iter()))
    }

    /// The groups of `keys`, ascending and none NULL, found by walking the groups so far (ascending
    /// too: all came while `ascending`) alongside them; keys not among them become new groups. None,
    /// changing nothing, for other keys. When two partitions of an aggregate over sorted input each
    /// grouped their rows in key order, their groups merge so without a hash lookup (TPC-H q18's 15
    /// million orders), and the map is built only if yet more keys come. Called as the ascending run
    /// ends, when no group is NULL's yet.
    fn merged_groups(&mut self, keys: &Int64Array) -> Option<Vec<u32>> {
        if keys.null_count() > 0 {
            return None;
        }
        let keys = keys.values();
        if !keys.windows(2).all(|w| w[0] <= w[1]) {
            return None;
        }
        let sorted = self.values.len();
        // Groups below `at` hold keys below the current one.
        let mut at = 0;
        let mut previous: Option<(i64, u32)> = None;
        let mut groups = Vec::with_capacity(keys.len());
        for &k in keys {
            if let Some((p, g)) = previous {
                if p == k {
                    groups.push(g);
                    continue;
                }
            }
            at += count_below(&self.values[at..sorted], k);
            let g = if at < sorted && self.values[at] == k {
                at as u32
            } else {
                self.values.push(k);
                (self.values.len() - 1) as u32
            };
            groups.push(g);
            previous = Some((k, g));
        }
        Some(groups)
    }

    /// The groups of `keys` if none is NULL and they all come at or above the last group's key, each
    /// the group of the key before or a new one; None, changing nothing, otherwise.
    fn ascending_groups(&mut self, keys: &Int64Array) -> Option<Vec<u32>> {
        if keys.null_count() > 0 {
            return None;
        }
        let keys = keys.values();
        let first_fits = match (self.values.last(), keys.first()) {
            (Some(last), Some(k)) => k >= last,
            _ => true,
        };
        if !first_fits || !keys.windows(2).all(|w| w[0] <= w[1]) {
            return None;
        }
        let mut groups = Vec::with_capacity(keys.len());
        for &k in keys {
            if self.values.last() != Some(&k) {
                self.values.push(k);
            }
            groups.push(self.values.len() as u32 - 1);
        }
        Some(groups)
    }

    /// All groups' keys (`values`, in group order) as an array of the key's type.
    fn array(&self, values: Vec<i64>) -> Result<ArrayRef> {
        let nulls = self.null_group.map(|n| (0..values.len() as u32).map(|g| g != n).collect::<NullBuffer>());
        self.array_with(values, nulls)
    }

    fn array_with(&self, values: Vec<i64>, nulls: Option<NullBuffer>) -> Result<ArrayRef> {
        let wide: ArrayRef = Arc::new(Int64Array::new(values.into(), nulls));
        if self.data_type == DataType::Int64 {
            return Ok(wide);
        }
        Ok(arrow::compute::cast(&wide, &self.data_type)?)
    }
}

/// How many of `sorted`'s values (ascending) are below `key`, searched from the front in doubling
/// steps: cheap when few are, as when walking two sorted lists side by side.
fn count_below(sorted: &[i64], key: i64) -> usize {
    let mut end = 1;
    while end < sorted.len() && sorted[end - 1] < key {
        end *= 2;
    }
    // Every value before `end / 2` is below the key (the step before checked the last of them).
    let start = end / 2;
    let end = end.min(sorted.len());
    start + sorted[start..end].partition_point(|v| *v < key)
}

/// The group of every key, adding the new ones, where keys are held by value: beside their group
/// ids in `map`, and by id in `values`. A NULL key (None) is in `null_group`, made when first seen
/// (its place in `values` holds the default).
fn groups_by_value<K: Copy + PartialEq + Default>(
    map: &mut HashTable<(K, u32)>,
    values: &mut Vec<K>,
    null_group: &mut Option<u32>,
    hash: fn(K) -> u64,
    keys: impl ExactSizeIterator<Item = Option<K>>,
) -> Vec<u32> {
    let mut groups = Vec::with_capacity(keys.len());
    let mut previous: Option<(K, u32)> = None;
    for key in keys {
        let Some(k) = key else {
            groups.push(*null_group.get_or_insert_with(|| {
                values.push(K::default());
                (values.len() - 1) as u32
            }));
            continue;
        };
        // Runs of equal keys are common (sorted or clustered input): skip the hash lookup.
        if let Some((p, g)) = previous {
            if p == k {
                groups.push(g);
                continue;
            }
        }
        let h = hash(k);
        let g = match map.find(h, |&(stored, _)| stored == k) {
            Some(&(_, g)) => g,
            None => {
                let g = values.len() as u32;
                values.push(k);
                map.insert_unique(h, (k, g), |&(stored, _)| hash(stored));
                g
            }
        };
        groups.push(g);
        previous = Some((k, g));
    }
    groups
}

/// A hash of packed keys: the high half folded into the low one, then mixed as an i64 key is.
#[inline]
pub(super) fn hash_packed(k: u128) -> u64 {
    hash_int(((k as u64) ^ ((k >> 64) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)) as i64)
}

impl PackedKeys {
    /// Packed keys for `types`, if there are several, all integer-like, fitting in 128 bits.
    fn new(types: &[DataType]) -> Result<Option<PackedKeys>> {
        let Some(packing) = KeyPacking::new(types) else { return Ok(None) };
        let converter = RowConverter::new(types.iter().map(|t| SortField::new(t.clone())).collect())?;
        Ok(Some(PackedKeys { packing, map: HashTable::new(), values: vec![], converter }))
    }

    fn groups(&mut self, keys: &[ArrayRef], rows: usize) -> Result<Vec<u32>> {
        let packed = self.packing.pack(keys, rows)?;
        // A NULL among the keys is a flag inside the packed value: the packed keys are never NULL.
        Ok(groups_by_value(&mut self.map, &mut self.values, &mut None, hash_packed, packed.into_iter().map(Some)))
    }

    /// The keys of packed `values` as arrays of the keys' types.
    fn arrays(&self, values: impl Iterator<Item = u128> + Clone) -> Result<Vec<ArrayRef>> {
        self.packing.unpack(values)
    }
}

impl KeyPacking {
    /// The packing of keys of `types`, if there are several, all integer-like, fitting in 128 bits.
    pub(super) fn new(types: &[DataType]) -> Option<KeyPacking> {
        if types.len() < 2 {
            return None;
        }
        let widths = types.iter().map(packed_width).collect::<Option<Vec<_>>>()?;
        if widths.iter().map(|(bits, _)| bits + 1).sum::<u32>() > 128 {
            return None;
        }
        // The first key in the highest bits.
        let mut shift = 0;
        let mut columns: Vec<PackedColumn> = types
            .iter()
            .zip(widths)
            .rev()
            .map(|(t, (bits, signed))| {
                let c = PackedColumn { data_type: t.clone(), bits, signed, shift };
                shift += bits + 1;
                c
            })
            .collect();
        columns.reverse();
        Some(KeyPacking { columns })
    }

    /// Every row's keys packed (a NULL key: its bits and flag 0).
    pub(super) fn pack(&self, keys: &[ArrayRef], rows: usize) -> Result<Vec<u128>> {
        let mut packed = vec![0u128; rows];
        for (column, key) in self.columns.iter().zip(keys) {
            let wide = arrow::compute::cast(key, &DataType::Int64)?;
            let wide = wide.as_primitive::<Int64Type>();
            let mask = u64::MAX >> (64 - column.bits);
            let valid = 1u128 << (column.shift + column.bits);
            match wide.nulls().filter(|n| n.null_count() > 0) {
                None => {
                    for (p, v) in packed.iter_mut().zip(wide.values()) {
                        *p |= valid | (((*v as u64) & mask) as u128) << column.shift;
                    }
                }
                Some(nulls) => {
                    for (i, (p, v)) in packed.iter_mut().zip(wide.values()).enumerate() {
                        if nulls.is_valid(i) {
                            *p |= valid | (((*v as u64) & mask) as u128) << column.shift;
                        }
                    }
                }
            }
        }
        Ok(packed)
    }

    /// The keys of packed `values` as arrays of the keys' types.
    fn unpack(&self, values: impl Iterator<Item = u128> + Clone) -> Result<Vec<ArrayRef>> {
        self.columns
            .iter()
            .map(|c| {
                let mask = u64::MAX >> (64 - c.bits);
                let unused = 64 - c.bits;
                let (wide, valid): (Vec<i64>, Vec<bool>) = values
                    .clone()
                    .map(|k| {
                        let v = ((k >> c.shift) as u64) & mask;
                        // Back to the i64 it was: sign-extended from its bits, or not.
                        let v = if c.signed { ((v << unused) as i64) >> unused } else { v as i64 };
                        (v, (k >> (c.shift + c.bits)) & 1 == 1)
                    })
                    .unzip();
                let nulls = NullBuffer::from(valid);
                let nulls = (nulls.null_count() > 0).then_some(nulls);
                let wide: ArrayRef = Arc::new(Int64Array::new(wide.into(), nulls));
                Ok(if c.data_type == DataType::Int64 { wide } else { arrow::compute::cast(&wide, &c.data_type)? })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Date32Array, Int32Array, StringArray, TimestampMicrosecondArray, UInt8Array};

    /// Group ids and keys given back, for a key array of any type: the same as a row-encoded key's.
    fn round_trip(keys: ArrayRef) -> (Vec<u32>, ArrayRef) {
        let mut table = GroupKeys::new(vec![keys.data_type().clone()], false).expect("keys");
        let groups = table.groups(std::slice::from_ref(&keys), keys.len()).expect("groups");
        let again = table.groups(std::slice::from_ref(&keys), keys.len()).expect("groups again");
        assert_eq!(groups, again, "a key seen before keeps its group");
        let arrays = table.take_arrays().expect("arrays");
        (groups, arrays[0].clone())
    }

    /// Keys in ascending batches are grouped without the map, until a key comes below the last one
    /// or a NULL comes: the groups are those of row-encoded keys all along.
    #[test]
    fn ascending_integer_keys_group_like_row_keys_before_and_after_they_stop_ascending() {
        let batches: Vec<Vec<Option<i64>>> = vec![
            vec![Some(1), Some(1), Some(2), Some(5)],
            vec![Some(5), Some(6), Some(9)],
            vec![],
            vec![Some(9), Some(12)],
            vec![Some(3), Some(12), Some(13), Some(1)],
            vec![None, Some(14), Some(14), Some(2)],
        ];
        for nulls_first in [false, true] {
            let mut int = GroupKeys::new(vec![DataType::Int64], false).expect("keys");
            let mut rows = GroupKeys::row_encoded(vec![DataType::Int64]).expect("row keys");
            let mut order = batches.clone();
            if nulls_first {
                order.insert(1, vec![None, Some(7)]);
            }
            for b in order {
                let keys: ArrayRef = Arc::new(arrow::array::Int64Array::from(b.clone()));
                let got = int.groups(std::slice::from_ref(&keys), keys.len()).expect("groups");
                let want = rows.groups(std::slice::from_ref(&keys), keys.len()).expect("row groups");
                assert_eq!(got, want, "{b:?}");
            }
            assert_eq!(int.len(), rows.len());
            let (GroupKeys::Int(i), GroupKeys::Rows(_)) = (&int, &rows) else { panic!("key tables") };
            assert!(!i.ascending, "a key below the last one ends the ascending run");
        }
        // A second run of ascending keys (another partition's groups) merges with the first without
        // the map; keys after it are looked up in the map, built then.
        let runs: Vec<Vec<i64>> = vec![vec![2, 4, 4, 9, 20], vec![21, 30], vec![0, 1, 4, 5, 5, 9, 25, 30, 31, 31, 40], vec![], vec![31, 3, 40, 41]];
        let mut int = GroupKeys::new(vec![DataType::Int64], false).expect("keys");
        let mut rows = GroupKeys::row_encoded(vec![DataType::Int64]).expect("row keys");
        for (n, b) in runs.into_iter().enumerate() {
            let keys: ArrayRef = Arc::new(arrow::array::Int64Array::from(b.clone()));
            let got = int.groups(std::slice::from_ref(&keys), keys.len()).expect("groups");
            let want = rows.groups(std::slice::from_ref(&keys), keys.len()).expect("row groups");
            assert_eq!(got, want, "{b:?}");
            let GroupKeys::Int(i) = &int else { panic!("int keys") };
            assert_eq!((i.ascending, i.indexed, i.map.len()), match n {
                0 | 1 => (true, false, 0),
                2 | 3 => (false, false, 0),
                _ => (false, true, i.values.len()),
            }, "after batch {n}");
        }
        assert_eq!(int.take_arrays().expect("keys"), rows.take_arrays().expect("row keys"));
        for (sorted, key, below) in [(vec![], 5, 0), (vec![1, 2, 3], 0, 0), (vec![1, 2, 3], 2, 1), (vec![1, 2, 3], 9, 3), ((0..100).collect(), 37, 37), ((0..100).collect(), 64, 64)] {
            assert_eq!(count_below(&sorted, key), below, "{sorted:?} {key}");
        }
        // Ascending throughout: the map stays empty.
        let mut int = GroupKeys::new(vec![DataType::Int32], false).expect("keys");
        for b in [vec![1, 1, 4], vec![4, 8]] {
            let keys: ArrayRef = Arc::new(Int32Array::from(b));
            int.groups(std::slice::from_ref(&keys), keys.len()).expect("groups");
        }
        let GroupKeys::Int(i) = &int else { panic!("int keys") };
        assert_eq!((i.values.as_slice(), i.map.len()), (&[1i64, 4, 8][..], 0));
    }

    #[test]
    fn integer_like_keys_keep_their_type_nulls_and_first_seen_order() {
        let cases: Vec<ArrayRef> = vec![
            Arc::new(Int32Array::from(vec![Some(5), None, Some(-7), Some(5), None, Some(i32::MIN)])),
            Arc::new(UInt8Array::from(vec![Some(255), Some(0), None, Some(255)])),
            Arc::new(Date32Array::from(vec![Some(19000), Some(-3), Some(19000), None])),
            Arc::new(TimestampMicrosecondArray::from(vec![Some(i64::MAX), Some(i64::MIN), None, Some(i64::MAX)]).with_timezone("+01:00")),
        ];
        for keys in cases {
            let (int_groups, int_keys) = round_trip(keys.clone());
            assert!(matches!(GroupKeys::new(vec![keys.data_type().clone()], false), Ok(GroupKeys::Int(_))), "{}", keys.data_type());
            // The row-encoded keys of the same array: the reference.
            let mut rows = GroupKeys::row_encoded(vec![keys.data_type().clone()]).expect("row keys");
            let row_groups = rows.groups(std::slice::from_ref(&keys), keys.len()).expect("row groups");
            assert_eq!(int_groups, row_groups, "{}", keys.data_type());
            assert_eq!(int_keys.as_ref(), rows.take_arrays().expect("row keys")[0].as_ref(), "{}", keys.data_type());
            assert_eq!(int_keys.data_type(), keys.data_type());
        }
    }

    #[test]
    fn keys_of_some_groups_and_spill_buckets_match_the_row_encoded_ones() {
        let keys: ArrayRef = Arc::new(Int32Array::from((0..5000).map(|i| (i % 37 != 0).then_some(i * 7919 % 1009)).collect::<Vec<_>>()));
        let mut int = GroupKeys::new(vec![DataType::Int32], false).expect("keys");
        int.groups(std::slice::from_ref(&keys), keys.len()).expect("groups");
        let mut rows = GroupKeys::row_encoded(vec![DataType::Int32]).expect("row keys");
        rows.groups(std::slice::from_ref(&keys), keys.len()).expect("row groups");
        let picked = [3u32, 0, 1, 3];
        let of = int.arrays_of(&picked).expect("arrays of");
        let all = int.arrays_of(&(0..int.len() as u32).collect::<Vec<_>>()).expect("all");
        for (i, g) in picked.iter().enumerate() {
            assert_eq!(of[0].is_null(i), all[0].is_null(*g as usize));
            if !of[0].is_null(i) {
                assert_eq!(of[0].as_primitive::<arrow::datatypes::Int32Type>().value(i), all[0].as_primitive::<arrow::datatypes::Int32Type>().value(*g as usize));
            }
        }
        // A group's bucket is its key row's, as a row-encoded table and a partial's keys give it:
        // spilled parts of a group meet again.
        for depth in 0..3 {
            let buckets = int.buckets(depth).expect("buckets");
            assert_eq!(buckets, rows.buckets(depth).expect("row buckets"));
            assert_eq!(buckets, int.buckets_of(&all, int.len(), depth).expect("buckets of"));
        }
    }

    #[test]
    fn several_integer_like_keys_packed_give_the_row_encoded_groups_keys_and_buckets() {
        use arrow::array::{Int64Array as I64, Int8Array, UInt32Array};
        let n = 3000;
        let keys: Vec<ArrayRef> = vec![
            Arc::new(Int32Array::from((0..n).map(|i| (i % 11 != 0).then_some(i % 37 - 18)).collect::<Vec<_>>())),
            Arc::new(UInt32Array::from((0..n).map(|i| (i % 13 != 0).then_some(if i % 2 == 0 { u32::MAX - (i % 5) as u32 } else { (i % 5) as u32 })).collect::<Vec<_>>())),
            Arc::new(Int8Array::from((0..n).map(|i| Some(if i % 3 == 0 { i8::MIN } else { i8::MAX - (i % 4) as i8 })).collect::<Vec<_>>())),
            Arc::new(Date32Array::from((0..n).map(|i| (i % 7 != 0).then_some(-(i % 9) * 1000)).collect::<Vec<_>>())),
        ];
        let wide: Vec<ArrayRef> = vec![
            Arc::new(I64::from((0..n).map(|i| (i % 5 != 0).then_some(if i % 2 == 0 { i64::MIN + (i % 3) as i64 } else { i64::MAX - (i % 3) as i64 })).collect::<Vec<_>>())),
            Arc::new(arrow::array::Int16Array::from((0..n).map(|i| (i % 4 != 0).then_some((i % 6) as i16 - 3)).collect::<Vec<_>>())),
            Arc::new(UInt8Array::from((0..n).map(|i| Some(255 - (i % 3) as u8)).collect::<Vec<_>>())),
        ];
        let times: Vec<ArrayRef> = vec![
            Arc::new(TimestampMicrosecondArray::from((0..n).map(|i| (i % 4 != 0).then_some((i % 6) as i64 - 3)).collect::<Vec<_>>()).with_timezone("+01:00")),
            Arc::new(Int32Array::from((0..n).map(|i| Some(i % 10 - 5)).collect::<Vec<_>>())),
        ];
        for keys in [keys, wide, times] {
            let types: Vec<DataType> = keys.iter().map(|k| k.data_type().clone()).collect();
            let mut packed = GroupKeys::new(types.clone(), false).expect("keys");
            assert!(matches!(packed, GroupKeys::Packed(_)), "{types:?}");
            let mut rows = GroupKeys::row_encoded(types.clone()).expect("row keys");
            let groups = packed.groups(&keys, n as usize).expect("groups");
            assert_eq!(groups, rows.groups(&keys, n as usize).expect("row groups"), "{types:?}");
            assert_eq!(groups, packed.groups(&keys, n as usize).expect("again"), "a key seen before keeps its group");
            assert!(packed.len() > 10, "{}", packed.len());
            let picked: Vec<u32> = (0..packed.len() as u32).rev().step_by(3).collect();
            let (of, row_of) = (packed.arrays_of(&picked).expect("of"), rows.arrays_of(&picked).expect("row of"));
            for (a, b) in of.iter().zip(&row_of) {
                assert_eq!(a.as_ref(), b.as_ref(), "{types:?}");
            }
            assert_eq!(packed.buckets(1).expect("buckets"), rows.buckets(1).expect("row buckets"));
            let (all, row_all) = (packed.take_arrays().expect("all"), rows.take_arrays().expect("row all"));
            for (a, b) in all.iter().zip(&row_all) {
                assert_eq!(a.as_ref(), b.as_ref(), "{types:?}");
                assert_eq!(a.data_type(), b.data_type());
            }
        }
        // Past 128 bits (two i64 keys and their NULL flags): a word per key.
        assert!(matches!(GroupKeys::new(vec![DataType::Int64, DataType::Int64], false), Ok(GroupKeys::Coded(_))));
        assert!(matches!(GroupKeys::new(vec![DataType::Int64, DataType::Utf8], false), Ok(GroupKeys::Rows(_))));
    }

    #[test]
    fn integer_and_decimal_keys_past_128_bits_group_as_their_rows_do() {
        let n = 500i64;
        let keys: Vec<ArrayRef> = vec![
            Arc::new(Int32Array::from((0..n).map(|i| Some((i % 3) as i32 + 1998)).collect::<Vec<_>>())),
            Arc::new(Int64Array::from((0..n).map(|i| (i % 5 != 0).then_some(i % 4 - 2)).collect::<Vec<_>>())),
            Arc::new(Int64Array::from((0..n).map(|i| Some(i64::MIN + i % 2)).collect::<Vec<_>>())),
            Arc::new(
                arrow::array::Decimal128Array::from((0..n).map(|i| (i % 7 != 0).then_some((i % 6) as i128 * 123_456 - 300_000)).collect::<Vec<_>>())
                    .with_precision_and_scale(18, 2)
                    .expect("decimal"),
            ),
        ];
        let types: Vec<DataType> = keys.iter().map(|k| k.data_type().clone()).collect();
        let mut coded = GroupKeys::new(types.clone(), false).expect("keys");
        assert!(matches!(coded, GroupKeys::Coded(_)), "{types:?}");
        let mut rows = GroupKeys::row_encoded(types.clone()).expect("row keys");
        let groups = coded.groups(&keys, n as usize).expect("groups");
        assert_eq!(groups, rows.groups(&keys, n as usize).expect("row groups"));
        assert!(coded.len() > 30, "{}", coded.len());
        assert_eq!(coded.buckets(2).expect("buckets"), rows.buckets(2).expect("row buckets"));
        for (a, b) in coded.take_arrays().expect("all").iter().zip(&rows.take_arrays().expect("row all")) {
            assert_eq!(a.as_ref(), b.as_ref(), "{types:?}");
        }
        // A decimal too wide for a word: rows.
        assert!(matches!(GroupKeys::new(vec![DataType::Int64, DataType::Int64, DataType::Decimal128(38, 2)], false), Ok(GroupKeys::Rows(_))));
    }

    #[test]
    fn other_keys_are_row_encoded() {
        assert!(matches!(GroupKeys::new(vec![DataType::Utf8], false), Ok(GroupKeys::Rows(_))));
        assert!(matches!(GroupKeys::new(vec![DataType::Utf8], true), Ok(GroupKeys::Coded(_))));
        assert!(matches!(GroupKeys::new(vec![DataType::Utf8, DataType::Float64], false), Ok(GroupKeys::Rows(_))));
        assert!(matches!(GroupKeys::new(vec![DataType::Int64, DataType::Int64], false), Ok(GroupKeys::Coded(_))));
        assert!(matches!(GroupKeys::new(vec![DataType::UInt64], false), Ok(GroupKeys::Rows(_))));
        let keys: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), None, Some("a")]));
        let (groups, back) = round_trip(keys.clone());
        assert_eq!(groups, vec![0, 1, 0]);
        assert_eq!(back.len(), 2);
    }
}
