//! `laneway kafka-mock`: a Kafka-protocol broker for trying laneway with no
//! Kafka installed (librdkafka's mock cluster, in memory). It prints its
//! bootstrap address on stdout, then runs until Ctrl-C.

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
    let _ = tokio::signal::ctrl_c().await;
    ExitCode::SUCCESS
}
