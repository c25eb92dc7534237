"""A workflow's DAG laid out for an inline SVG, on the server: no JavaScript library.

Each node goes in the column of its depth (the longest chain of parents above it),
so every edge points right. Within a column, nodes are ordered by the mean row of
their parents (one barycentre pass), which removes most crossings in the shapes
workflows usually take (fan-out, fan-in, chains) at a cost linear in the edges.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from conveyor.models import Task

NODE_W, NODE_H = 168, 46
COL_GAP, ROW_GAP, MARGIN = 64, 18, 12


@dataclass(slots=True)
class Box:
    key: str
    task: Task
    depth: int
    row: int = 0
    x: int = 0
    y: int = 0


@dataclass(slots=True)
class Edge:
    path: str
    state: str


@dataclass(slots=True)
class Layout:
    boxes: list[Box] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)
    width: int = 0
    height: int = 0
    node_w: int = NODE_W
    node_h: int = NODE_H


def depths(nodes: Mapping[str, Task]) -> dict[str, int]:
    """Longest-path depth of each node (Kahn's order, linear); parents outside the workflow are ignored."""
    key_of = {task.id: key for key, task in nodes.items()}
    children: dict[str, list[str]] = {key: [] for key in nodes}
    missing = {key: 0 for key in nodes}
    for key, task in nodes.items():
        for parent in {key_of[d] for d in task.depends_on if d in key_of}:
            children[parent].append(key)
            missing[key] += 1
    depth = {key: 0 for key, count in missing.items() if count == 0}
    ready = list(depth)
    while ready:
        key = ready.pop()
        for child in children[key]:
            depth[child] = max(depth.get(child, 0), depth[key] + 1)
            missing[child] -= 1
            if missing[child] == 0:
                ready.append(child)
    for key in nodes:  # only a cycle (which submit refuses) leaves a node unreached
        depth.setdefault(key, 0)
    return depth


def layout(nodes: Mapping[str, Task]) -> Layout:
    """Positions for every node and a curve for every dependency edge."""
    if not nodes:
        return Layout()
    depth = depths(nodes)
    key_of = {task.id: key for key, task in nodes.items()}
    boxes = {key: Box(key, task, depth[key]) for key, task in nodes.items()}
    columns: dict[int, list[Box]] = {}
    for box in sorted(boxes.values(), key=lambda b: (b.depth, b.key)):
        columns.setdefault(box.depth, []).append(box)
    for d in sorted(columns):
        column = columns[d]
        if d:

            def centre(box: Box) -> float:
                rows = [boxes[key_of[p]].row for p in box.task.depends_on if p in key_of]
                return sum(rows) / len(rows) if rows else 0.0

            column.sort(key=lambda b: (centre(b), b.key))
        for row, box in enumerate(column):
            box.row = row
            box.x = MARGIN + d * (NODE_W + COL_GAP)
            box.y = MARGIN + row * (NODE_H + ROW_GAP)
    edges = []
    for box in boxes.values():
        for parent_id in box.task.depends_on:
            if parent_id not in key_of:
                continue
            parent = boxes[key_of[parent_id]]
            x1, y1 = parent.x + NODE_W, parent.y + NODE_H // 2
            x2, y2 = box.x, box.y + NODE_H // 2
            bend = (x2 - x1) // 2
            path = f"M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2 - 6},{y2}"
            edges.append(Edge(path, parent.task.state.value))
    width = MARGIN * 2 + len(columns) * NODE_W + (len(columns) - 1) * COL_GAP
    tallest = max(len(c) for c in columns.values())
    height = MARGIN * 2 + tallest * NODE_H + (tallest - 1) * ROW_GAP
    return Layout(list(boxes.values()), edges, width, height)
