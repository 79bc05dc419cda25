//! The Nexmark benchmark's event generator: an auction site's people, auctions and bids.
//!
//! Follows the generator of the Nexmark suites of Apache Beam and Flink: events are numbered; event
//! `n`'s kind comes from `n` modulo the sum of the proportions (1 person, 3 auctions, 46 bids by
//! default), its event time is `base_time + n * inter_event_delay`, ids grow with the event number,
//! and bids go mostly to hot auctions and come mostly from hot bidders. Every field of event `n` is
//! drawn from a random stream seeded by `(seed, n)` alone, so any range of events is made the same
//! by any thread in any order (morsel-parallel, replayable from an event number). The random
//! strings differ from Beam's (another random generator), the distributions do not.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringBuilder, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

const FIRST_PERSON_ID: i64 = 1000;
const FIRST_AUCTION_ID: i64 = 1000;
const FIRST_CATEGORY_ID: i64 = 10;
const NUM_CATEGORIES: u64 = 5;
/// One auction (person) in this many is hot.
const HOT_AUCTION_RATIO: i64 = 100;
const HOT_SELLER_RATIO: i64 = 100;
const HOT_BIDDER_RATIO: i64 = 100;
/// People who may bid or sell at any time, and how far ahead of the last id a random id may go.
const NUM_ACTIVE_PEOPLE: i64 = 1000;
const PERSON_ID_LEAD: i64 = 10;
const NUM_IN_FLIGHT_AUCTIONS: i64 = 100;
const AUCTION_ID_LEAD: i64 = 10;
/// Average sizes in bytes the `extra` column pads each kind of event to.
const AVG_PERSON_BYTES: usize = 200;
const AVG_AUCTION_BYTES: usize = 500;
const AVG_BID_BYTES: usize = 100;

const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const US_CITIES: [&str; 10] =
    ["Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend", "Redmond", "Seattle", "Kent", "Cheyenne"];
const FIRST_NAMES: [&str; 11] = ["Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter"];
const LAST_NAMES: [&str; 9] = ["Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris"];
const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
const HOT_URLS: [&str; 4] = [
    "https://www.nexmark.com/googl/item.htm?query=1",
    "https://www.nexmark.com/faceb/item.htm?query=1",
    "https://www.nexmark.com/baidu/item.htm?query=1",
    "https://www.nexmark.com/apple/item.htm?query=1",
];

/// Which of the three Nexmark tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NexmarkTable {
    Person,
    Auction,
    Bid,
}

impl NexmarkTable {
    pub fn parse(name: &str) -> Option<NexmarkTable> {
        match name.to_ascii_lowercase().as_str() {
            "person" | "people" => Some(NexmarkTable::Person),
            "auction" | "auctions" => Some(NexmarkTable::Auction),
            "bid" | "bids" => Some(NexmarkTable::Bid),
            _ => None,
        }
    }

    /// The columns, named as in Flink's Nexmark DDL.
    pub fn schema(self) -> SchemaRef {
        let ts = || DataType::Timestamp(TimeUnit::Microsecond, None);
        let long = |n: &str| Field::new(n, DataType::Int64, false);
        let text = |n: &str| Field::new(n, DataType::Utf8, false);
        let time = |n: &str| Field::new(n, ts(), false);
        Arc::new(Schema::new(match self {
            NexmarkTable::Person => vec![
                long("id"),
                text("name"),
                text("emailAddress"),
                text("creditCard"),
                text("city"),
                text("state"),
                time("dateTime"),
                text("extra"),
            ],
            NexmarkTable::Auction => vec![
                long("id"),
                text("itemName"),
                text("description"),
                long("initialBid"),
                long("reserve"),
                time("dateTime"),
                time("expires"),
                long("seller"),
                long("category"),
                text("extra"),
            ],
            NexmarkTable::Bid => {
                vec![long("auction"), long("bidder"), long("price"), text("channel"), text("url"), time("dateTime"), text("extra")]
            }
        }))
    }
}

/// How events are made; the same configuration and event number always give the same event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NexmarkConfig {
    pub seed: u64,
    pub person_proportion: u64,
    pub auction_proportion: u64,
    pub bid_proportion: u64,
    /// Event time of event 0, in microseconds since the epoch.
    pub base_time: i64,
    /// Events per second of event time (Flink's `first-event.rate`).
    pub events_per_second: u64,
    /// Bids go to a hot auction `hot_auction_ratio - 1` times in `hot_auction_ratio`; likewise sellers
    /// and bidders.
    pub hot_auction_ratio: u64,
    pub hot_seller_ratio: u64,
    pub hot_bidder_ratio: u64,
}

impl Default for NexmarkConfig {
    fn default() -> Self {
        NexmarkConfig {
            seed: 0,
            person_proportion: 1,
            auction_proportion: 3,
            bid_proportion: 46,
            // 2026-01-01 00:00:00 UTC.
            base_time: 1_767_225_600_000_000,
            events_per_second: 10_000,
            hot_auction_ratio: 2,
            hot_seller_ratio: 4,
            hot_bidder_ratio: 4,
        }
    }
}

/// A stream of random numbers for one event.
struct Draws(u64);

impl Draws {
    fn next(&mut self) -> u64 {
        self.0 = crate::gensort::splitmix64(self.0);
        self.0
    }

    /// Uniform in `0..n` (`n` > 0).
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n.max(1) as u128) >> 64) as u64
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }

    /// Lower-case letters and spaces.
    fn string(&mut self, len: usize, out: &mut String) {
        for _ in 0..len {
            let r = self.below(27) as u8;
            out.push(if r == 26 { ' ' } else { (b'a' + r) as char });
        }
    }

    /// A price in cents: log-uniform between $1 and $1,000,000.
    fn price(&mut self) -> i64 {
        (10f64.powf(self.unit() * 6.0) * 100.0).round() as i64
    }
}

impl NexmarkConfig {
    fn total(&self) -> u64 {
        (self.person_proportion + self.auction_proportion + self.bid_proportion).max(1)
    }

    /// Which table event `n` belongs to.
    pub fn kind(&self, n: u64) -> NexmarkTable {
        let r = n % self.total();
        if r < self.person_proportion {
            NexmarkTable::Person
        } else if r < self.person_proportion + self.auction_proportion {
            NexmarkTable::Auction
        } else {
            NexmarkTable::Bid
        }
    }

    fn inter_event_delay_us(&self) -> f64 {
        1e6 / self.events_per_second.max(1) as f64
    }

    /// Event time of event `n`, in whole milliseconds (Nexmark's times are TIMESTAMP(3)).
    pub fn event_time(&self, n: u64) -> i64 {
        let us = self.base_time + (n as f64 * self.inter_event_delay_us()) as i64;
        us - us.rem_euclid(1000)
    }

    /// How many of every `total()` events are of `table`.
    fn share(&self, table: NexmarkTable) -> u64 {
        match table {
            NexmarkTable::Person => self.person_proportion,
            NexmarkTable::Auction => self.auction_proportion,
            NexmarkTable::Bid => self.bid_proportion,
        }
    }

    /// How many events make about `rows` rows of `table`.
    pub fn events_for_rows(&self, table: NexmarkTable, rows: usize) -> u64 {
        (rows as u64 * self.total()).div_ceil(self.share(table).max(1)).max(1)
    }

    /// About how many rows of `table` `events` events hold (1 in 50 are persons, 3 auctions, 46 bids).
    pub fn rows_in(&self, table: NexmarkTable, events: f64) -> f64 {
        events * self.share(table) as f64 / self.total() as f64
    }

    /// The id (from 0) of the last person created at or before event `n`.
    fn last_person(&self, n: u64) -> i64 {
        let (epoch, offset) = (n / self.total(), n % self.total());
        let offset = offset.min(self.person_proportion.saturating_sub(1));
        (epoch * self.person_proportion + offset) as i64
    }

    /// The id (from 0) of the last auction created at or before event `n`.
    fn last_auction(&self, n: u64) -> i64 {
        let (mut epoch, mut offset) = ((n / self.total()) as i64, n % self.total());
        if offset < self.person_proportion {
            epoch -= 1;
            offset = self.auction_proportion.saturating_sub(1);
        } else if offset >= self.person_proportion + self.auction_proportion {
            offset = self.auction_proportion.saturating_sub(1);
        } else {
            offset -= self.person_proportion;
        }
        (epoch * self.auction_proportion as i64 + offset as i64).max(0)
    }

    /// A recent person: one of the last active people, or one just about to join.
    fn some_person(&self, n: u64, d: &mut Draws) -> i64 {
        let people = self.last_person(n) + 1;
        let active = people.min(NUM_ACTIVE_PEOPLE);
        people - active + d.below((active + PERSON_ID_LEAD) as u64) as i64
    }

    /// An auction still open, or one just about to open.
    fn some_auction(&self, n: u64, d: &mut Draws) -> i64 {
        let last = self.last_auction(n);
        let first = (last - NUM_IN_FLIGHT_AUCTIONS).max(0);
        first + d.below((last - first + 1 + AUCTION_ID_LEAD) as u64) as i64
    }

    /// The rows of `table` among events `start .. start + events`.
    pub fn batch(&self, table: NexmarkTable, start: u64, events: u64) -> Result<RecordBatch, arrow::error::ArrowError> {
        self.batch_with(table, start, events, true)
    }

    /// `batch`, its `extra` column empty strings unless `extra`: the padding that brings a row to
    /// Nexmark's average size is most of the work of making persons and auctions, and a scan not
    /// reading it skips it. It is drawn last, so the other columns are the same either way.
    pub fn batch_with(&self, table: NexmarkTable, start: u64, events: u64, extra: bool) -> Result<RecordBatch, arrow::error::ArrowError> {
        let mut rows = Rows::new(table, extra);
        for n in start..start.saturating_add(events) {
            if self.kind(n) == table {
                let mut d = Draws(self.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ n.wrapping_mul(0xBF58_476D_1CE4_E5B9));
                rows.add(self, n, &mut d);
            }
        }
        rows.finish(table.schema())
    }
}

/// Column builders of one table's rows.
struct Rows {
    longs: Vec<Vec<i64>>,
    times: Vec<Vec<i64>>,
    texts: Vec<StringBuilder>,
    scratch: String,
    /// Whether the `extra` padding is made (else an empty string).
    extra: bool,
}

impl Rows {
    fn new(table: NexmarkTable, extra: bool) -> Rows {
        let (longs, times, texts) = match table {
            NexmarkTable::Person => (1, 1, 6),
            NexmarkTable::Auction => (5, 2, 3),
            NexmarkTable::Bid => (3, 1, 3),
        };
        Rows {
            longs: vec![Vec::new(); longs],
            times: vec![Vec::new(); times],
            texts: (0..texts).map(|_| StringBuilder::new()).collect(),
            scratch: String::new(),
            extra,
        }
    }

    /// The columns in schema order: within each type, the builders are in the schema's order.
    fn finish(self, schema: SchemaRef) -> Result<RecordBatch, arrow::error::ArrowError> {
        let (mut longs, mut times, mut texts) = (self.longs.into_iter(), self.times.into_iter(), self.texts.into_iter());
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| -> ArrayRef {
                match f.data_type() {
                    DataType::Int64 => Arc::new(Int64Array::from(longs.next().unwrap_or_default())),
                    DataType::Utf8 => Arc::new(texts.next().map(|mut b| b.finish()).unwrap_or_else(|| StringBuilder::new().finish())),
                    _ => Arc::new(TimestampMicrosecondArray::from(times.next().unwrap_or_default())),
                }
            })
            .collect();
        let rows = columns.first().map_or(0, |c| c.len());
        RecordBatch::try_new_with_options(schema, columns, &arrow::array::RecordBatchOptions::new().with_row_count(Some(rows)))
    }

    /// Text column `i`, the row's `extra`: `len` random letters, the last draws of its event.
    fn padding(&mut self, i: usize, len: usize, d: &mut Draws) {
        if self.extra {
            self.text(i, |s| d.string(len, s));
        } else {
            self.texts[i].append_value("");
        }
    }

    fn text(&mut self, i: usize, f: impl FnOnce(&mut String)) -> usize {
        self.scratch.clear();
        f(&mut self.scratch);
        self.texts[i].append_value(&self.scratch);
        self.scratch.len()
    }

    fn add(&mut self, c: &NexmarkConfig, n: u64, d: &mut Draws) {
        let time = c.event_time(n);
        match c.kind(n) {
            NexmarkTable::Person => {
                self.longs[0].push(c.last_person(n) + FIRST_PERSON_ID);
                let mut size = 8 + 8;
                size += self.text(0, |s| {
                    s.push_str(d.pick(&FIRST_NAMES));
                    s.push(' ');
                    s.push_str(d.pick(&LAST_NAMES));
                });
                size += self.text(1, |s| {
                    d.string(7, s);
                    s.push('@');
                    d.string(5, s);
                    s.push_str(".com");
                });
                size += self.text(2, |s| {
                    for g in 0..4 {
                        if g > 0 {
                            s.push(' ');
                        }
                        s.push_str(&format!("{:04}", d.below(10_000)));
                    }
                });
                size += self.text(3, |s| s.push_str(d.pick(&US_CITIES)));
                size += self.text(4, |s| s.push_str(d.pick(&US_STATES)));
                self.times[0].push(time);
                self.padding(5, AVG_PERSON_BYTES.saturating_sub(size), d);
            }
            NexmarkTable::Auction => {
                let id = c.last_auction(n) + FIRST_AUCTION_ID;
                let seller = if d.below(c.hot_seller_ratio) > 0 {
                    (c.last_person(n) / HOT_SELLER_RATIO) * HOT_SELLER_RATIO
                } else {
                    c.some_person(n, d)
                };
                let initial = d.price();
                let reserve = initial + d.price();
                // Open for up to twice the event time it takes for the in-flight auctions to turn over.
                let turnover = NUM_IN_FLIGHT_AUCTIONS as u64 * c.total() / c.auction_proportion.max(1);
                let horizon_ms = (turnover as f64 * c.inter_event_delay_us() / 1000.0).max(1.0) as u64;
                let expires = time + (1 + d.below(2 * horizon_ms)) as i64 * 1000;
                let mut size = 8 * 6;
                size += self.text(0, |s| d.string(20, s));
                size += self.text(1, |s| d.string(100, s));
                self.longs[0].push(id);
                self.longs[1].push(initial);
                self.longs[2].push(reserve);
                self.times[0].push(time);
                self.times[1].push(expires);
                self.longs[3].push(seller + FIRST_PERSON_ID);
                self.longs[4].push(FIRST_CATEGORY_ID + d.below(NUM_CATEGORIES) as i64);
                self.padding(2, AVG_AUCTION_BYTES.saturating_sub(size), d);
            }
            NexmarkTable::Bid => {
                let auction = if d.below(c.hot_auction_ratio) > 0 {
                    (c.last_auction(n) / HOT_AUCTION_RATIO) * HOT_AUCTION_RATIO
                } else {
                    c.some_auction(n, d)
                };
                let bidder = if d.below(c.hot_bidder_ratio) > 0 {
                    (c.last_person(n) / HOT_BIDDER_RATIO) * HOT_BIDDER_RATIO + 1
                } else {
                    c.some_person(n, d)
                };
                self.longs[0].push(auction + FIRST_AUCTION_ID);
                self.longs[1].push(bidder + FIRST_PERSON_ID);
                self.longs[2].push(d.price());
                let mut size = 8 * 4;
                let hot = d.below(10) < 9;
                let which = d.below(HOT_CHANNELS.len() as u64) as usize;
                let channel = d.below(10_000);
                size += self.text(0, |s| if hot { s.push_str(HOT_CHANNELS[which]) } else { s.push_str(&format!("channel-{channel}")) });
                size += self.text(1, |s| {
                    if hot {
                        s.push_str(HOT_URLS[which]);
                    } else {
                        s.push_str("https://www.nexmark.com/");
                        d.string(5, s);
                        s.push_str(&format!("/item.htm?query=1&channel_id={channel}"));
                    }
                });
                self.times[0].push(time);
                self.padding(2, AVG_BID_BYTES.saturating_sub(size), d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::Int64Type;

    #[test]
    fn without_extra_the_other_columns_are_the_same() {
        let c = NexmarkConfig::default();
        for table in [NexmarkTable::Person, NexmarkTable::Auction, NexmarkTable::Bid] {
            let (full, lean) = (c.batch(table, 0, 5000).expect("full"), c.batch_with(table, 0, 5000, false).expect("lean"));
            let extra = full.schema().index_of("extra").expect("extra");
            for i in 0..full.num_columns() {
                if i == extra {
                    assert!(full.column(i).as_string::<i32>().values().len() > 10 * full.num_rows(), "{table:?}: padding made");
                    assert!(lean.column(i).as_string::<i32>().iter().all(|s| s == Some("")));
                } else {
                    assert_eq!(full.column(i), lean.column(i), "{table:?} column {i}");
                }
            }
        }
    }

    #[test]
    fn events_split_by_proportion_and_ranges_are_reproducible() {
        let c = NexmarkConfig::default();
        let bids = c.batch(NexmarkTable::Bid, 0, 5000).expect("bids");
        let people = c.batch(NexmarkTable::Person, 0, 5000).expect("people");
        let auctions = c.batch(NexmarkTable::Auction, 0, 5000).expect("auctions");
        assert_eq!((people.num_rows(), auctions.num_rows(), bids.num_rows()), (100, 300, 4600));
        // Any split of the range makes the same rows.
        let halves = [c.batch(NexmarkTable::Bid, 0, 2501).expect("first"), c.batch(NexmarkTable::Bid, 2501, 2499).expect("second")];
        let joined = arrow::compute::concat_batches(&bids.schema(), &halves).expect("concat");
        assert_eq!(joined, bids);
        // Person ids count up from 1000 with no gaps; bids name people and auctions that exist by then.
        let ids: Vec<i64> = people.column(0).as_primitive::<Int64Type>().values().to_vec();
        assert_eq!(ids, (1000..1100).collect::<Vec<_>>());
        let bidders = bids.column(1).as_primitive::<Int64Type>();
        assert!(bidders.values().iter().all(|b| (1000..1100 + PERSON_ID_LEAD).contains(b)));
        // Event times follow the event number at 10,000 events per second.
        let times = bids.column(5).as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        assert!(times.values().windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(times.value(times.len() - 1) - c.base_time, 499_000);
        // Another seed, other prices.
        let other = NexmarkConfig { seed: 1, ..c.clone() }.batch(NexmarkTable::Bid, 0, 5000).expect("other");
        assert_ne!(other.column(2), bids.column(2));
    }

    #[test]
    fn most_bids_go_to_hot_auctions() {
        let c = NexmarkConfig::default();
        let bids = c.batch(NexmarkTable::Bid, 0, 200_000).expect("bids");
        let auctions = bids.column(0).as_primitive::<Int64Type>();
        let hot = auctions.values().iter().filter(|a| (*a - FIRST_AUCTION_ID) % HOT_AUCTION_RATIO == 0).count();
        let share = hot as f64 / auctions.len() as f64;
        assert!((0.45..0.6).contains(&share), "hot share {share}");
        let extra = bids.column(6).as_string::<i32>();
        let avg = (0..bids.num_rows()).map(|i| extra.value(i).len() + 32 + bids.column(4).as_string::<i32>().value(i).len()).sum::<usize>() as f64
            / bids.num_rows() as f64;
        assert!(avg > 90.0, "bids average about {AVG_BID_BYTES} bytes, got {avg}");
    }
}
