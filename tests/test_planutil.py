"""The plan checker itself: a scan passes only with an index condition of its own."""

from __future__ import annotations

from tests.planutil import unconditioned_scans

ANTI_JOIN = """Nested Loop Anti Join  (cost=0.56..16.61 rows=1 width=8)
  ->  Index Only Scan using documents_declared_idx on documents a  (cost=0.28..8.30 rows=1 width=8)
  ->  Index Only Scan using documents_key_idx on documents v  (cost=0.28..8.30 rows=1 width=8)
        Index Cond: ((key1 = a.key1) AND (key2 = a.key2))""".splitlines()

PROBES = """Nested Loop  (cost=0.56..16.61 rows=1 width=8)
  ->  Index Scan using documents_invt_no_idx on documents d  (cost=0.28..8.30 rows=1 width=8)
        Index Cond: (invt_no = ANY ($1))
        Filter: ((head ->> 'appType') = '1')
  ->  Index Only Scan using documents_key_idx on documents v  (cost=0.28..8.30 rows=1 width=8)
        Index Cond: ((key1 = d.key1) AND (key2 = d.key2))""".splitlines()


def test_a_whole_index_read_is_caught_though_the_next_node_probes() -> None:
    # the first scan has no condition of its own; the one in the two lines after it is the next node's
    assert unconditioned_scans(ANTI_JOIN) == [ANTI_JOIN[1].strip()]


def test_scans_with_their_own_conditions_pass_and_sequential_scans_never_do() -> None:
    assert unconditioned_scans(PROBES) == []
    seq = ["Seq Scan on jobs  (cost=0.00..1.01 rows=1 width=8)", "  Filter: (id = 1)"]
    assert unconditioned_scans(seq) == [seq[0]]
