//! Exactly-once mode on the real stack: each commit interval of each stage is one Kafka
//! transaction (outputs, changelog, offsets). A worker SIGKILLed mid-batch leaves its batch
//! open; its restart (same instance id) aborts it and does the work again, so a read_committed
//! reader of the target topics sees each change exactly once — where at-least-once mode would
//! show the replay as duplicates.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::ingest::product;
use crate::support::{
    self, psql, unique, wait_until, Harmony, HarmonyOptions, Record, TopicReader,
};

fn options(group: &str) -> HarmonyOptions {
    let mut options = HarmonyOptions::stack(group.to_owned());
    options.exactly_once = true;
    // Long batches: a kill is sure to catch one open with outputs already on the broker.
    options.commit_interval = "5s";
    let targets = support::product_targets(group, &["erp", "shop", "wms"], "");
    options.extra_toml = format!("{}{targets}", product());
    options
}

/// Products `<prefix>-NNN` for each number, in one erp transaction.
fn insert_products(prefix: &str, numbers: std::ops::Range<usize>) {
    let values: Vec<String> = numbers
        .map(|n| format!("('{prefix}-{n:03}', 'Once', 5.00, 10)"))
        .collect();
    psql(
        "erp",
        &format!(
            "INSERT INTO products (sku, name, price, quantity) VALUES {}",
            values.join(", ")
        ),
    )
    .unwrap();
}

/// Records per product of ours on a topic (read_committed, librdkafka's default).
fn per_sku(records: &[Record], prefix: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in records {
        if let Some(key) = r.key.as_deref() {
            if let Some(start) = key.find(prefix) {
                let sku: String = key[start..].chars().take_while(|c| *c != '"').collect();
                *counts.entry(sku).or_default() += 1;
            }
        }
    }
    counts
}

#[test]
fn each_change_reaches_the_targets_once_across_a_sigkill_mid_batch() {
    if !support::stack_available("exactly_once") {
        return;
    }
    let group = unique("e2e-eo");
    let mut harmony = Harmony::start(&options(&group)).unwrap();
    let prefix = unique("EO").replace('-', "");
    let total = 240;
    let writer = {
        let prefix = prefix.clone();
        std::thread::spawn(move || {
            for batch in 0..24 {
                insert_products(&prefix, batch * 10..batch * 10 + 10);
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let mut shop = TopicReader::new(&format!("{group}.shop.product")).unwrap();

    // Kill while stage 2's first batch is open: its outputs are on the broker (a
    // read_uncommitted reader sees them) and not committed (a read_committed one sees none).
    let topic = format!("{group}.shop.product");
    let mut early = TopicReader::new_uncommitted(&topic).unwrap();
    // Products on the broker that a read_committed reader still does not see, 300 ms later
    // too (not just its reading lag): an open batch holds them.
    let open_batch = |early: &mut TopicReader, shop: &mut TopicReader| {
        early.read_for(Duration::from_millis(300)).unwrap();
        shop.read_for(Duration::from_millis(300)).unwrap();
        let committed = per_sku(&shop.records, &prefix);
        per_sku(&early.records, &prefix)
            .keys()
            .filter(|sku| !committed.contains_key(*sku))
            .count()
    };
    wait_until(
        Duration::from_secs(60),
        "a batch open with outputs on the broker",
        || Ok(open_batch(&mut early, &mut shop) >= 5 && open_batch(&mut early, &mut shop) >= 5),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", harmony.log()));
    harmony.kill_hard().unwrap();
    harmony.spawn().unwrap();
    writer.join().unwrap();

    let mut wms = TopicReader::new(&format!("{group}.wms.product")).unwrap();
    for (name, reader) in [("shop", &mut shop), ("wms", &mut wms)] {
        let complete = reader
            .read_until(Duration::from_secs(90), |rs| {
                per_sku(rs, &prefix).len() >= total
            })
            .unwrap();
        assert!(
            complete,
            "{name}: {} of {total}\n{}",
            per_sku(&reader.records, &prefix).len(),
            harmony.log()
        );
    }
    // A little longer, for anything late.
    shop.read_for(Duration::from_secs(3)).unwrap();
    wms.read_for(Duration::from_secs(3)).unwrap();
    for (name, reader) in [("shop", &mut shop), ("wms", &mut wms)] {
        let counts = per_sku(&reader.records, &prefix);
        let twice: Vec<_> = counts.iter().filter(|(_, n)| **n != 1).collect();
        assert!(
            twice.is_empty(),
            "{name}: delivered other than once: {twice:?}"
        );
        assert_eq!(counts.len(), total);
    }
    // The proof the kill mattered: the aborted batch's records are in the log, seen by a
    // reader that does not wait for commits.
    let mut uncommitted = TopicReader::new_uncommitted(&topic).unwrap();
    uncommitted.read_for(Duration::from_secs(3)).unwrap();
    let replayed = per_sku(&uncommitted.records, &prefix)
        .values()
        .filter(|n| **n > 1)
        .count();
    eprintln!("exactly once: {replayed} products delivered twice to read_uncommitted, once to read_committed");
    assert!(
        replayed > 0,
        "the kill hit no open batch; the test proves nothing"
    );
    assert!(harmony.log().contains("transactional producer ready"));
    assert!(
        harmony
            .terminate(Duration::from_secs(30))
            .unwrap()
            .success(),
        "{}",
        harmony.log()
    );
}

/// Two live workers configured with the same instance id: the second one's transactional
/// producers fence the first's, which stops with an error that names the setting to fix.
#[test]
fn a_worker_fenced_by_a_namesake_stops_and_says_why() {
    if !support::stack_available("exactly_once") {
        return;
    }
    let group = unique("e2e-eo-fence");
    let mut first = Harmony::start(&options(&group)).unwrap();
    let mut namesake = first.another_worker("w0").unwrap();
    let prefix = unique("EOF").replace('-', "");
    insert_products(&prefix, 0..12);
    wait_until(Duration::from_secs(60), "the first worker to stop", || {
        Ok(first.exited().is_some())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", first.log()));
    assert!(!first.exited().unwrap().success());
    assert!(
        first.log().contains("HARMONY_INSTANCE_ID"),
        "the error must say how to fix it\n{}",
        first.log()
    );
    assert!(namesake.exited().is_none(), "{}", namesake.log());
}
