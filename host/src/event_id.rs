//! Event ids: unique, time-ordered 64-bit snowflakes in the layout Osprey decodes.
//!
//! Layout (from the high bits): milliseconds since 2015-01-01T00:00:00Z in bits 22 and up, the
//! host's instance id in bits 12 to 21, and a per-millisecond sequence in bits 0 to 11. The
//! generator comes from the `rs-snowflake` crate and reads the clock on every id.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use snowflake::SnowflakeIdGenerator;

/// 2015-01-01T00:00:00Z in milliseconds since the Unix epoch.
pub const SNOWFLAKE_EPOCH_MS: u64 = 1_420_070_400_000;

pub struct EventIds {
    generator: SnowflakeIdGenerator,
}

impl EventIds {
    /// `instance_id` must be below 1024; it fills bits 12 to 21.
    pub fn new(instance_id: u16) -> Self {
        let epoch = UNIX_EPOCH + Duration::from_millis(SNOWFLAKE_EPOCH_MS);
        let machine = i32::from(instance_id >> 5) & 0x1f;
        let node = i32::from(instance_id) & 0x1f;
        EventIds { generator: SnowflakeIdGenerator::with_epoch(machine, node, epoch) }
    }

    // NOTE: if the wall clock steps backwards, ids may repeat until it catches up again; the
    // generator does not guard against that.
    pub fn next_id(&mut self) -> u64 {
        self.generator.real_time_generate() as u64
    }
}

/// The time an event id encodes.
pub fn id_time(id: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis((id >> 22) + SNOWFLAKE_EPOCH_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_increasing_and_decode_to_now() {
        let mut ids = EventIds::new(1023);
        let before = SystemTime::now();
        let generated: Vec<u64> = (0..20_000).map(|_| ids.next_id()).collect();
        for pair in generated.windows(2) {
            assert!(pair[0] < pair[1], "ids {} and {} are not increasing", pair[0], pair[1]);
        }
        let decoded = id_time(generated[0]);
        let skew = decoded.duration_since(before).unwrap_or_else(|error| error.duration());
        assert!(skew < Duration::from_secs(1), "id decodes to {decoded:?}, {skew:?} from now");
        assert_eq!((generated[0] >> 12) & 0x3ff, 1023, "instance id bits");
    }
}
