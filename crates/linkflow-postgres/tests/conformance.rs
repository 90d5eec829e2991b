//! The store conformance suite, unchanged, on PostgreSQL: one fresh database per case in a
//! throwaway cluster.

use linkflow_postgres::testing::TestCluster;
use linkflow_postgres::PgStore;
use linkflow_store::conformance::Harness;

struct PgHarness {
    url: String,
}

impl Harness for PgHarness {
    type Store = PgStore;

    fn fresh() -> Self {
        let cluster = TestCluster::shared_or_skip("conformance").expect("checked by available()");
        PgHarness {
            url: cluster.create_database(),
        }
    }

    fn open(&self) -> PgStore {
        PgStore::open(&self.url).expect("the store opens")
    }

    fn available(case: &str) -> bool {
        TestCluster::shared_or_skip(case).is_some()
    }
}

linkflow_store::conformance_tests!(PgHarness);
