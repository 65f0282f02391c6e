"""How many trials fit in a cluster's resources (``orchestrator.cluster.fit_count``)."""

from orchestrator.cluster import fit_count


def test_each_resource_bounds_the_count():
    have = {"CPU": 16.0, "GPU": 8.0, "memory": 1e11}
    assert fit_count(have, {"CPU": 1.0, "GPU": 1.0}) == 8  # GPUs bind before CPUs
    assert fit_count(have, {"CPU": 3.0}) == 5  # 16 // 3
    assert fit_count(have, {"CPU": 2.0, "GPU": 0.5}) == 8  # CPUs: 8, GPUs: 16


def test_a_resource_the_cluster_lacks_fits_nothing():
    assert fit_count({"CPU": 4.0}, {"CPU": 1.0, "trainer": 1.0}) == 0
    assert fit_count({"CPU": 4.0, "trainer": 2.0}, {"CPU": 1.0, "trainer": 1.0}) == 2


def test_zero_amounts_ask_nothing():
    assert fit_count({"CPU": 4.0}, {"CPU": 1.0, "GPU": 0.0}) == 4
