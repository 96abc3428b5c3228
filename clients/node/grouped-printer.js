'use strict';
/**
 * Prints an answer's points as they are decoded, one point at a time, in answer order.
 *
 * Points decode in parallel, so their deltas interleave on the wire; printed as they come they
 * would be unreadable. The printer follows one point live (its deltas are written at once) and
 * holds the others' text until that point ends; then the next point's held text is written and
 * it is followed live in turn. Plain text only (no cursor movement), so the output reads the same
 * in a terminal, a pipe or a log. Knows nothing of gRPC: it takes AnswerEvents as proto-loader
 * shapes them (see client.js) and writes to any object with write(string).
 */

const FRAME_PARTS = new Set(['NODE_PART_OPENING', 'NODE_PART_CLOSING']);

class GroupedPrinter {
  /**
   * @param {{write(s: string): unknown}} out
   * @param {object} [graph] the Plan's graph, for order and titles; without one, planReady brings it and
   *   a "plan:" line is printed then (an answer() call)
   */
  constructor(out, graph) {
    this._out = out;
    this._reportPlan = !graph;
    this._ready = Boolean(graph); // without a graph, points' text waits for planReady (answer order)
    this._points = new Map(); // node id -> { title, held, status: 'waiting'|'live'|'ended' }
    this._order = [];
    this._current = 0; // index in _order of the point followed live
    if (graph) this._setGraph(graph);
  }

  _setGraph(graph) {
    for (const node of graph.nodes) this._point(node.id, node.title, FRAME_PARTS.has(node.part));
  }

  _point(id, title = '', frame = false) {
    if (!this._points.has(id)) {
      // A point missing from the plan is still shown, after the planned ones.
      this._points.set(id, { id, title, frame, held: '', opened: false, ended: false, failure: null });
      this._order.push(id);
    }
    return this._points.get(id);
  }

  /** Feed one AnswerEvent. Returns the AnswerDone when this event ends the answer. */
  onEvent(event) {
    switch (event.event) {
      case 'nodePlanned':
        // the outline as the skeleton is written, a line a point, before any point's text
        this._out.write(`outline: ${event.nodePlanned.position}. ${event.nodePlanned.node.title}\n`);
        break;
      case 'planReady': {
        // Points that started while the skeleton was written are listed in the graph's order, their
        // text held so far, and shown from here on as any other point's.
        const early = this._points;
        this._points = new Map();
        this._order = [];
        this._setGraph(event.planReady.graph);
        for (const [id, { held, opened, ended, failure }] of early) {
          Object.assign(this._point(id), { held, opened, ended, failure });
        }
        if (this._reportPlan) {
          const graph = event.planReady.graph;
          const points = graph.nodes.filter((n) => !FRAME_PARTS.has(n.part)).length;
          this._out.write(`plan: ${graph.route}, ${points} points (${event.planReady.reason})\n`);
        }
        this._ready = true;
        this._advance();
        break;
      }
      case 'nodeDelta':
        this._delta(event.nodeDelta.nodeId, event.nodeDelta.text);
        break;
      case 'nodeFinished':
        this._end(event.nodeFinished.nodeId, null);
        break;
      case 'nodeFailed':
        this._end(event.nodeFailed.nodeId, `${event.nodeFailed.error}: ${event.nodeFailed.reason}`);
        break;
      case 'answerDone':
        // Every point has ended by now; one that never started is still listed.
        for (const id of this._order) this._point(id).ended = true;
        this._advance();
        const points = this._order.filter((id) => !this._point(id).frame).length;
        this._out.write(`${summaryLine(event.answerDone, points)}\n`);
        return event.answerDone;
      default:
        break; // nodeStarted and promptProgress change nothing that is printed
    }
    return undefined;
  }

  _delta(id, text) {
    this._point(id).held += text;
    if (this._ready && this._order[this._current] === id) this._show(this._point(id));
  }

  _end(id, failure) {
    Object.assign(this._point(id), { ended: true, failure });
    if (this._ready) this._advance();
  }

  /** Write the live point's held text; while it has ended, close it and move on to the next. */
  _advance() {
    while (this._current < this._order.length) {
      const point = this._point(this._order[this._current]);
      this._show(point);
      if (!point.ended) return;
      this._out.write(point.failure ? `\n  (failed: ${point.failure})\n` : '\n');
      this._current += 1;
    }
  }

  _show(point) {
    if (!point.held && !point.ended) return; // no header before the point has anything to show
    if (!point.opened) {
      // the answer's opening and closing sentences are paragraphs of their own, without a header
      this._out.write(point.frame ? '\n' : `\n[${point.id}] ${point.title}\n`);
      point.opened = true;
    }
    if (point.held) this._out.write(point.held);
    point.held = '';
  }
}

/** One line: route, points, failures, tokens, first token and total time. */
function summaryLine(done, planned) {
  const tokens = (done.usage ?? []).reduce((sum, u) => sum + (u.completionTokens ?? 0), 0);
  const timings = done.timings ?? {};
  const failed = (done.failedNodeIds ?? []).length;
  return `done: ${done.route}, ${planned} points, ${failed} failed, ${tokens} tokens, ` +
    `first token ${seconds(timings.firstTokenS)}, total ${seconds(timings.totalS)}`;
}

function seconds(value) {
  return `${(value ?? 0).toFixed(2)} s`;
}

module.exports = { GroupedPrinter, summaryLine };
