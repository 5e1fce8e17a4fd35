//! `laneway kafka-mock`: a Kafka-protocol broker for trying laneway with no
//! Kafka installed (librdkafka's mock cluster, in memory). It prints its
//! bootstrap address on stdout, then runs until Ctrl-C.
//!
//! The mock keeps at most 5 MiB (and 100,000 record batches) per partition
//! and deletes a partition's oldest records beyond that, as retention
//! would, without a word: this command watches its partitions' low
//! watermarks and says on stderr when records were deleted.

#[cfg(feature = "kafka")]
use std::io::Write;
use std::process::ExitCode;

#[cfg(feature = "kafka")]
use rdkafka::mocking::MockCluster;

/// Arguments of `kafka-mock`.
#[derive(Debug, clap::Args)]
pub struct KafkaMockArgs {
    /// Brokers in the cluster.
    #[arg(long, default_value_t = 3)]
    pub brokers: i32,

    /// Topics to create before printing the address (repeatable).
    #[arg(long = "topic")]
    pub topics: Vec<String>,

    /// Partitions of each topic created.
    #[arg(long, default_value_t = 8)]
    pub partitions: i32,
}

/// Without the `kafka` feature (the command is hidden then): an error
/// naming the feature.
#[cfg(not(feature = "kafka"))]
pub async fn kafka_mock(_: KafkaMockArgs) -> ExitCode {
    eprintln!("error: {}", super::not_built("kafka-mock", "kafka"));
    ExitCode::FAILURE
}

/// Starts the cluster, prints its address and waits for Ctrl-C.
#[cfg(feature = "kafka")]
pub async fn kafka_mock(args: KafkaMockArgs) -> ExitCode {
    let cluster = match MockCluster::new(args.brokers) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: starting the mock cluster: {e}");
            return ExitCode::FAILURE;
        }
    };
    let replication = args.brokers.clamp(1, 3);
    for topic in &args.topics {
        if let Err(e) = cluster.create_topic(topic, args.partitions, replication) {
            eprintln!("error: creating topic {topic}: {e}");
            return ExitCode::FAILURE;
        }
    }
    // The address alone on stdout, so `KAFKA_BROKERS=$(...)`-style use works.
    println!("{}", cluster.bootstrap_servers());
    let _ = std::io::stdout().flush();
    eprintln!(
        "kafka-mock: {} brokers at {}; topics {:?} with {} partitions; Ctrl-C stops it (its data is in memory only)",
        args.brokers,
        cluster.bootstrap_servers(),
        args.topics,
        args.partitions
    );
    watch_deletions(cluster.bootstrap_servers());
    let _ = tokio::signal::ctrl_c().await;
    ExitCode::SUCCESS
}

/// How often the partitions' low watermarks are looked at.
#[cfg(feature = "kafka")]
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Says on stderr, from a thread of its own, whenever the cluster has
/// deleted the oldest records of a topic (a partition's low watermark
/// moved), with the count deleted so far.
#[cfg(feature = "kafka")]
fn watch_deletions(brokers: String) {
    use std::collections::HashMap;

    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let client: BaseConsumer = match ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kafka-mock: cannot watch for deleted records: {e}");
            return;
        }
    };
    let watching = std::thread::Builder::new()
        .name("kafka-mock-watch".into())
        .spawn(move || {
            // Per topic: the low watermark of each partition last seen.
            let mut seen: HashMap<String, HashMap<i32, i64>> = HashMap::new();
            loop {
                std::thread::sleep(WATCH_EVERY);
                let Ok(metadata) = client.fetch_metadata(None, WATCH_EVERY) else {
                    continue;
                };
                for topic in metadata.topics() {
                    let lows = seen.entry(topic.name().to_string()).or_default();
                    let mut newly = 0;
                    for p in topic.partitions() {
                        let Ok((low, _)) = client.fetch_watermarks(topic.name(), p.id(), WATCH_EVERY)
                        else {
                            continue;
                        };
                        let last = lows.entry(p.id()).or_insert(0);
                        newly += (low - *last).max(0);
                        *last = (*last).max(low);
                    }
                    if newly > 0 {
                        let total: i64 = lows.values().sum();
                        eprintln!(
                            "kafka-mock: deleted the {newly} oldest records of topic {} ({total} so far): the mock keeps at most 5 MiB per partition, so a consumer from the earliest offset will not see them; produce less, or create the topic with more --partitions",
                            topic.name()
                        );
                    }
                }
            }
        });
    if let Err(e) = watching {
        eprintln!("kafka-mock: cannot watch for deleted records: {e}");
    }
}
