"""Library workload: NetworkX graph algorithms, traced whole (callspan: --include networkx).

As in NetworkX's tutorial and algorithm docs, on a generated small-world graph
(``connected_watts_strogatz_graph``, seeded) with random edge weights: single-source and
all-pairs-from-some-sources shortest paths (BFS and Dijkstra), ``betweenness_centrality``
(sampled with ``k``, seeded), ``closeness_centrality`` of a few nodes, ``clustering``,
``connected_components``, ``minimum_spanning_tree`` and ``core_number``. Pure-Python
algorithms only (nothing that needs NumPy/SciPy).

Deterministic. ``python lib_networkx.py [SCALE]`` (SCALE multiplies the number of rounds).
The last stdout line is ``ELAPSED <seconds>`` for the work section only (networkx is imported
outside it; each round builds its own graph inside it).
"""

import random
import sys
import time
import zlib

import networkx as nx

SCALE = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
ROUNDS = max(1, round(32 * SCALE))
NODES = 300


def build(seed):
    graph = nx.connected_watts_strogatz_graph(NODES, 6, 0.1, seed=seed)
    rng = random.Random(seed)
    for u, v in graph.edges():
        graph[u][v]["weight"] = rng.randint(1, 20)
    return graph


def analyse(graph, seed):
    results = []
    lengths = nx.single_source_shortest_path_length(graph, 0)
    results.append(sum(lengths.values()))
    for source in range(0, NODES, NODES // 10):
        dist = nx.single_source_dijkstra_path_length(graph, source, weight="weight")
        results.append(sum(dist.values()))
    path = nx.shortest_path(graph, 0, NODES // 2, weight="weight")
    results.append(len(path))
    between = nx.betweenness_centrality(graph, k=40, seed=seed)
    results.append(round(max(between.values()), 6))
    for node in range(0, NODES, NODES // 5):
        results.append(round(nx.closeness_centrality(graph, u=node), 6))
    clustering = nx.clustering(graph)
    results.append(round(sum(clustering.values()), 6))
    results.append(nx.number_connected_components(graph))
    tree = nx.minimum_spanning_tree(graph, weight="weight")
    results.append(tree.size(weight="weight"))
    cores = nx.core_number(graph)
    results.append(max(cores.values()))
    return results


start = time.perf_counter()
checksum = 0
for seed in range(ROUNDS):
    graph = build(seed)
    checksum = zlib.crc32(repr(analyse(graph, seed)).encode(), checksum)
elapsed = time.perf_counter() - start
print("rounds", ROUNDS, "nodes", NODES, "checksum", checksum)
print(f"ELAPSED {elapsed:.6f}")
