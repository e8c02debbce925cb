//! The Kafka-protocol broker of the integration tests: tansu, started by
//! scripts/test, its address in TIDEWATCH_TEST_KAFKA.
#![allow(dead_code)]

/// The broker, or None outside CI when it is not set (the test then says
/// so and returns). Under CI=true a missing broker fails the test.
pub fn broker() -> Option<String> {
    match std::env::var("TIDEWATCH_TEST_KAFKA") {
        Ok(b) if !b.is_empty() => Some(b),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!(
                "TIDEWATCH_TEST_KAFKA is not set under CI: scripts/test starts tansu and sets it"
            )
        }
        _ => {
            eprintln!("TIDEWATCH_TEST_KAFKA not set: run scripts/test, which starts tansu");
            None
        }
    }
}
