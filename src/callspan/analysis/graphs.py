"""Graphs of the HTML report: a flame graph of the call tree, and latency distributions.

Both are self-contained: the flame graph is the tree as JSON plus a small script that lays it
out as positioned boxes (an icicle: root on top, callees below), and the distributions are
inline SVG. No network, no library.

The flame graph is the exact call tree of ``cpu.resolve``: every logical stack (an asyncio
task under the coroutine that created it, as the tracer links them), a box's width its stack's
self cost plus that of everything below it (CPU, or running time without a CPU counter). Past
``MAX_FLAME_NODES`` stacks, the narrowest are folded: each kept box gets one ``(N more)`` box for
its children that did not make the cut, as wide as they were together, so every width stays
exact and the page stays readable (and fast) at 100k stacks.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass

from callspan.analysis.cpu import ROOT, CpuReport
from callspan.analysis.latency import BINS_PER_DECADE, LatencyRow, bin_floor, bin_of
from callspan.untrusted import printable

MAX_FLAME_NODES = 4000
MIN_BINS = 10  # a distribution chart spans at least this many bins (2.5 decades)
TAIL_LABEL = "({count} more)"


@dataclass(slots=True)
class FlameTree:
    """Boxes of the flame graph, parents before children; box 0 is the root ("all")."""

    names: list[str]  # distinct frame names
    name: list[int]  # box -> index in names
    parent: list[int]  # box -> parent box (-1 for the root)
    self_cost: list[int]
    width: list[int]  # self cost of the box and every box below it
    total: list[int]  # the stack's recorded total (CPU or running time); -1: a folded tail
    calls: list[int]
    folded: list[int]  # stacks folded into a tail box (0: a real stack)
    stacks: int  # stacks in the call tree, before folding

    def __len__(self) -> int:
        return len(self.parent)


def flame_tree(report: CpuReport, max_nodes: int = MAX_FLAME_NODES) -> FlameTree:
    """The call tree of ``report`` as flame graph boxes: at most ``max_nodes`` stacks (the widest,
    with their ancestors) plus the root and one tail box per parent that lost children."""
    table = report.table
    count = len(table.parent)
    self_of = [0] * count
    total_of = [0] * count
    calls_of = [0] * count
    present = bytearray(count)
    for st in report.stacks:
        self_of[st.stack] = st.self_cost
        total_of[st.stack] = st.total_cost
        calls_of[st.stack] = st.calls
        present[st.stack] = 1
    parent = table.parent
    # A child is interned after its parent, so its id is larger: walk ids down to sum widths up.
    for stack in range(count - 1, ROOT, -1):
        if present[stack]:
            present[parent[stack]] = 1
    width = list(self_of)
    subtree = [1] * count  # stacks at and below
    for stack in range(count - 1, ROOT, -1):
        if present[stack]:
            width[parent[stack]] += width[stack]
            subtree[parent[stack]] += subtree[stack]
    stacks = [s for s in range(1, count) if present[s]]
    # The widest stacks; a parent is at least as wide as a child and has a smaller id, so the
    # order (-width, id) puts it first: the kept set contains every kept box's ancestors.
    stacks.sort(key=lambda s: (-width[s], s))
    kept = set(stacks[:max_nodes])
    children: dict[int, list[int]] = {}
    for s in stacks:
        children.setdefault(parent[s], []).append(s)
    names: list[str] = []
    name_index: dict[str, int] = {}

    def name_id(text: str) -> int:
        index = name_index.get(text)
        if index is None:
            index = name_index[text] = len(names)
            names.append(text)
        return index

    tree = FlameTree(names, [name_id("all")], [-1], [self_of[ROOT]], [width[ROOT]], [total_of[ROOT] or width[ROOT]],
                     [0], [0], len(stacks))
    queue = [(ROOT, 0)]
    while queue:
        stack, box = queue.pop()
        mine = children.get(stack, [])
        # Widest first (names break ties), the tail last.
        mine.sort(key=lambda s: (-width[s], table.names[table.frame[s]]))
        dropped = [s for s in mine if s not in kept]
        for s in mine:
            if s not in kept:
                continue
            tree.name.append(name_id(table.names[table.frame[s]]))
            tree.parent.append(box)
            tree.self_cost.append(self_of[s])
            tree.width.append(width[s])
            tree.total.append(total_of[s])
            tree.calls.append(calls_of[s])
            tree.folded.append(0)
            queue.append((s, len(tree.parent) - 1))
        if dropped:
            folded = sum(subtree[s] for s in dropped)
            tree.name.append(name_id(TAIL_LABEL.format(count=f"{folded:,}")))
            tree.parent.append(box)
            tree.self_cost.append(sum(width[s] for s in dropped))
            tree.width.append(sum(width[s] for s in dropped))
            tree.total.append(-1)
            tree.calls.append(sum(calls_of[s] for s in dropped))
            tree.folded.append(folded)
    return tree


def flame_json(tree: FlameTree) -> str:
    """The tree as the page's script reads it (column arrays), safe inside a <script> element."""
    # Names come from the trace: terminal controls escaped as in every output (callspan.untrusted).
    data = {"names": [printable(name) for name in tree.names], "name": tree.name, "parent": tree.parent, "self": tree.self_cost,
            "width": tree.width, "total": tree.total, "calls": tree.calls, "folded": tree.folded}
    # No "<" at all: nothing in a name can end the script element early (or start a comment
    # that changes how it ends); the JSON parser reads the escape back.
    return json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")


FLAME_CSS = """
.fg{position:relative;overflow:hidden;border:1px solid #ddd;border-radius:4px;background:#fff;
font:11px ui-monospace,Menlo,Consolas,monospace;user-select:none}
.fg-node{position:absolute;height:17px;box-sizing:border-box;border:1px solid #fff;border-width:0 1px 1px 0;
overflow:hidden;white-space:nowrap;text-overflow:ellipsis;padding:1px 3px;cursor:pointer;color:#222}
.fg-node:hover{filter:brightness(.88)}.fg-node.fg-anc{opacity:.55}.fg-node.fg-tail{color:#555}
.fg-bar{margin:.4em 0;display:flex;gap:1em;align-items:center}.fg-detail{min-height:1.5em;
font:12.5px ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap}
"""

# Lays the boxes out for the box in focus: it and its subtree fill the width, its ancestors
# span it above (dimmed); a click focuses a box, a click on the root or "reset" goes back.
# Boxes under half a pixel are not drawn (nor anything below them): at that zoom they are noise.
FLAME_JS = r"""
(function(){
const data=JSON.parse(document.getElementById('fg-data').textContent);
const root=document.getElementById('fg'), detail=document.getElementById('fg-detail');
const unit=root.dataset.unit, basis=root.dataset.basis, n=data.parent.length, ROW=17;
const kids=Array.from({length:n},()=>[]);
for(let i=1;i<n;i++) kids[data.parent[i]].push(i);
function fmt(v){
  if(unit==='ns'){for(const [s,u] of [[1e9,'s'],[1e6,'ms'],[1e3,'us']]) if(v>=s) return (v/s).toFixed(v>=100*s?0:1)+' '+u;
    return v+' ns';}
  for(const [s,u] of [[1e12,'T'],[1e9,'G'],[1e6,'M'],[1e3,'k']]) if(v>=s) return (v/s).toFixed(1)+u+(unit==='instructions'?' ins':'');
  return String(v);
}
function color(i){
  const name=data.names[data.name[i]];
  if(data.folded[i]||name==='(other)') return '#d9d9d9';
  if(i===0) return '#e8e8e8';
  let h=0; for(let k=0;k<name.length;k++) h=(h*31+name.charCodeAt(k))>>>0;
  return 'hsl('+(10+h%45)+','+(70+h%25)+'%,'+(62+(h>>>8)%14)+'%)';
}
function describe(i){
  const all=data.width[0]||1, name=data.names[data.name[i]];
  if(i===0) return 'all: '+basis+' '+fmt(data.width[0])+' in '+(n-1).toLocaleString('en')+' boxes; click a box to zoom';
  let text=name+'\n'+basis+' here and below: '+fmt(data.width[i])+' ('+(100*data.width[i]/all).toFixed(1)+
    '% of all), self '+fmt(data.self[i]);
  if(data.total[i]>=0&&i>0) text+=', recorded total '+fmt(data.total[i]);
  text+=', '+data.calls[i].toLocaleString('en')+' calls';
  if(data.folded[i]) text+=' ('+data.folded[i].toLocaleString('en')+' narrower stacks folded together)';
  return text;
}
let focus=0;
function draw(){
  root.textContent='';
  const W=root.clientWidth, chain=[];
  for(let a=data.parent[focus];a>=0;a=data.parent[a]) chain.unshift(a);
  let depth=0;
  const frag=document.createDocumentFragment();
  function box(i,x,w,d,ancestor){
    const el=document.createElement('div');
    el.className='fg-node'+(ancestor?' fg-anc':'')+(data.folded[i]?' fg-tail':'');
    el.style.left=x+'px'; el.style.top=(d*ROW)+'px'; el.style.width=w+'px';
    el.style.background=color(i); el.dataset.box=i;
    el.textContent=data.names[data.name[i]]; el.title=describe(i);
    frag.appendChild(el);
  }
  for(const a of chain){box(a,0,W,depth,true); depth++;}
  let maxDepth=depth;
  const scale=W/(data.width[focus]||1);
  const stack=[[focus,0,depth]];
  while(stack.length){
    const [i,x,d]=stack.pop(), w=data.width[i]*scale;
    if(w<0.5 && i!==focus) continue;
    box(i,x,Math.max(w,1),d,false); if(d>maxDepth) maxDepth=d;
    let cx=x;
    for(const c of kids[i]){stack.push([c,cx,d+1]); cx+=data.width[c]*scale;}
  }
  root.style.height=((maxDepth+1)*ROW+2)+'px';
  root.appendChild(frag);
  detail.textContent=describe(focus);
}
root.addEventListener('click',e=>{
  const el=e.target.closest('.fg-node'); if(!el) return;
  const i=+el.dataset.box; focus=(i===focus)?(data.parent[i]>=0?data.parent[i]:0):i; draw();
});
root.addEventListener('mousemove',e=>{const el=e.target.closest('.fg-node'); if(el) detail.textContent=describe(+el.dataset.box);});
root.addEventListener('mouseleave',()=>{detail.textContent=describe(focus);});
document.getElementById('fg-reset').addEventListener('click',()=>{focus=0;draw();});
window.addEventListener('resize',draw);
draw();
})();
"""


def flame_html(report: CpuReport, max_nodes: int = MAX_FLAME_NODES) -> str:
    """The flame graph section: container, data and script (the report's CSS adds FLAME_CSS)."""
    tree = flame_tree(report, max_nodes)
    what = "self CPU" if report.basis == "cpu" else "running time (no CPU counter in the input)"
    folded = sum(tree.folded)
    note = (f"{tree.stacks:,} stacks" + (f"; the {folded:,} narrowest are folded into “(N more)” boxes"
                                        if folded else ""))
    return (f"<p class=muted>Icicle of the exact call tree (root on top): a box's width is the {html.escape(what)} "
            f"of its stack and everything it called, asyncio tasks under the coroutine that created them. "
            f"Click a box to zoom into it, again to zoom out. {note}.</p>"
            f"<div class=fg-bar><button type=button id=fg-reset>reset zoom</button>"
            f"<div id=fg-detail class=fg-detail></div></div>"
            f"<div id=fg class=fg data-unit='{html.escape(printable(report.unit))}' "
            f"data-basis='{'CPU' if report.basis == 'cpu' else 'running time'}'></div>"
            f"<script type='application/json' id=fg-data>{flame_json(tree)}</script>"
            f"<script>{FLAME_JS}</script>")


def distribution_svg(row: LatencyRow, width: int = 300, height: int = 110) -> str:
    """A function's wall-time distribution: one bar per non-empty bin on a log time axis, with
    p50/p95/p99 marked. Empty when the row has no timed calls."""
    if not row.distribution:
        return ""
    from callspan.analysis.report import fmt_count, fmt_ns  # the report imports this module

    left, right, top, bottom = 22, 22, 28, 22
    pw, ph = width - left - right, height - top - bottom
    low = min(min(row.distribution), bin_of(row.p50))
    high = max(max(row.distribution), bin_of(row.p99))
    # At least MIN_BINS bins wide, so that one busy bin is not a wall of blue.
    high = max(high, low + MIN_BINS - 1)
    span = high - low + 1
    step = pw / span
    peak = max(row.distribution.values())
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class=dist width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img">',
             f"<title>{html.escape(printable(row.name))}: wall time per call, {row.timed_calls:,} calls</title>",
             f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="#999"/>']
    for index, calls in sorted(row.distribution.items()):
        h = max(1.0, ph * calls / peak)
        x = left + (index - low) * step
        parts.append(f'<rect class=bar x="{x + 0.5:.1f}" y="{top + ph - h:.1f}" width="{max(step - 1, 1):.1f}" '
                     f'height="{h:.1f}" fill="#6e9bd1"><title>{fmt_ns(bin_floor(index))} to '
                     f'{fmt_ns(bin_floor(index + 1))}: {fmt_count(calls)} calls</title></rect>')
    marks = (("p50", row.p50, "#1a7f37"), ("p95", row.p95, "#9a6700"), ("p99", row.p99, "#cf222e"))
    for line, (label, value, color) in enumerate(marks):
        # At its log position within its bin; labels on three lines so close ones stay legible.
        position = math.log10(max(value, 1)) * BINS_PER_DECADE - low
        x = left + min(max(position, 0), span) * step
        parts.append(f'<line class=mark x1="{x:.1f}" x2="{x:.1f}" y1="{top - 4}" y2="{top + ph}" stroke="{color}" '
                     f'stroke-dasharray="3 2"/><text x="{x + 2:.1f}" y="{top - 18 + 8 * line}" fill="{color}" '
                     f'font-size="9">{label}</text>')
    for index in range(low, high + 2, BINS_PER_DECADE if span > 8 else 2):
        x = left + (index - low) * step
        parts.append(f'<text x="{x:.1f}" y="{height - 6}" text-anchor="middle">{fmt_ns(bin_floor(index))}</text>')
    parts.append("</svg>")
    return "".join(parts)
