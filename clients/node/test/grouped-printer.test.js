'use strict';
// The printer alone, fed scripted events: no server needed, so this runs everywhere Node does.
const test = require('node:test');
const assert = require('node:assert/strict');
const { GroupedPrinter, summaryLine } = require('../grouped-printer');

const GRAPH = { route: 'ROUTE_PARALLEL', nodes: [{ id: 1, title: 'First' }, { id: 2, title: 'Second' }] };
const DONE = {
  event: 'answerDone',
  answerDone: {
    route: 'ROUTE_PARALLEL', failedNodeIds: [],
    usage: [{ completionTokens: 5 }, { completionTokens: 2 }],
    timings: { firstTokenS: 0.25, totalS: 1.5 },
  },
};

function sink() {
  const writes = [];
  return { writes, write: (s) => writes.push(s), text: () => writes.join('') };
}
const delta = (nodeId, text) => ({ event: 'nodeDelta', nodeDelta: { nodeId, text } });
const finished = (nodeId) => ({ event: 'nodeFinished', nodeFinished: { nodeId } });

test('interleaved deltas come out grouped per point, in answer order', () => {
  const out = sink();
  const printer = new GroupedPrinter(out, GRAPH);
  for (const e of [delta(2, 'b1 '), delta(1, 'a1 '), delta(2, 'b2'), delta(1, 'a2'), finished(2), finished(1)]) {
    assert.equal(printer.onEvent(e), undefined);
  }
  assert.equal(printer.onEvent(DONE), DONE.answerDone);
  assert.equal(out.text(), '\n[1] First\na1 a2\n\n[2] Second\nb1 b2\n' +
    'done: ROUTE_PARALLEL, 2 points, 0 failed, 7 tokens, first token 0.25 s, total 1.50 s\n');
});

test('the followed point is written as it arrives, the others only when their turn comes', () => {
  const out = sink();
  const printer = new GroupedPrinter(out, GRAPH);
  printer.onEvent(delta(1, 'a1'));
  assert.equal(out.text(), '\n[1] First\na1');
  printer.onEvent(delta(2, 'b1'));
  assert.equal(out.text(), '\n[1] First\na1', 'point 2 is held while point 1 is followed');
  printer.onEvent(finished(1));
  assert.equal(out.text(), '\n[1] First\na1\n\n[2] Second\nb1');
  printer.onEvent(delta(2, ' b2'));
  assert.ok(out.text().endsWith('b1 b2'), 'point 2 is now followed live');
});

test('a failed point says so, and points missing from the plan are still shown', () => {
  const out = sink();
  const printer = new GroupedPrinter(out, { nodes: [{ id: 1, title: 'Only' }] });
  printer.onEvent({ event: 'nodeFailed', nodeFailed: { nodeId: 1, error: 'INTERNAL', reason: 'decode failed' } });
  printer.onEvent(delta(7, 'stray'));
  printer.onEvent({ event: 'answerDone', answerDone: { route: 'ROUTE_PARALLEL', failedNodeIds: [1] } });
  assert.match(out.text(), /\[1\] Only\n\n {2}\(failed: INTERNAL: decode failed\)\n/);
  assert.match(out.text(), /\[7\] \nstray\ndone: ROUTE_PARALLEL, 2 points, 1 failed, 0 tokens/);
});

test('a plan_ready event supplies the order when no graph was given', () => {
  const out = sink();
  const printer = new GroupedPrinter(out);
  printer.onEvent({ event: 'planReady', planReady: { graph: GRAPH, reason: 'r' } });
  printer.onEvent(delta(2, 'b'));
  printer.onEvent(finished(2));
  assert.equal(out.text(), 'plan: ROUTE_PARALLEL, 2 points (r)\n', 'point 2 waits for point 1');
});

test('summaryLine copes with missing usage and timings', () => {
  assert.equal(summaryLine({ route: 'ROUTE_DIRECT' }, 1),
    'done: ROUTE_DIRECT, 1 points, 0 failed, 0 tokens, first token 0.00 s, total 0.00 s');
});

test('the opening and closing print as paragraphs, and only points are counted', () => {
  const out = sink();
  const printer = new GroupedPrinter(out, { nodes: [
    { id: 3, title: 'Opening', part: 'NODE_PART_OPENING' }, { id: 1, title: 'First', part: 'NODE_PART_POINT' },
    { id: 4, title: 'Closing', part: 'NODE_PART_CLOSING' }] });
  for (const e of [delta(1, 'a'), delta(3, 'Hello.'), delta(4, 'Bye.'), finished(1), finished(3), finished(4)]) {
    printer.onEvent(e);
  }
  printer.onEvent(DONE);
  assert.equal(out.text(), '\nHello.\n\n[1] First\na\n\nBye.\n' +
    'done: ROUTE_PARALLEL, 1 points, 0 failed, 7 tokens, first token 0.25 s, total 1.50 s\n');
});

test('without a graph up front, the outline and then the plan are printed as they arrive', () => {
  const out = sink();
  const printer = new GroupedPrinter(out);
  const planned = (position, title) => ({ event: 'nodePlanned', nodePlanned: { position, node: { id: position, title } } });
  printer.onEvent(planned(1, 'First'));
  printer.onEvent(planned(2, 'Second'));
  printer.onEvent({ event: 'planReady', planReady: { graph: GRAPH, reason: 'two points' } });
  printer.onEvent(delta(1, 'a'));
  assert.equal(out.text(), 'outline: 1. First\noutline: 2. Second\nplan: ROUTE_PARALLEL, 2 points (two points)\n' +
    '\n[1] First\na');
});

test('text of a point started while the skeleton is written waits for the plan, then prints in order', () => {
  const out = sink();
  const printer = new GroupedPrinter(out);
  printer.onEvent({ event: 'nodePlanned', nodePlanned: { position: 1, node: { id: 1, title: 'First' } } });
  printer.onEvent(delta(1, 'early '));
  printer.onEvent(finished(1));
  assert.equal(out.text(), 'outline: 1. First\n');
  const framed = { route: 'ROUTE_PARALLEL', nodes: [{ id: 3, title: 'Opening', part: 'NODE_PART_OPENING' },
    { id: 1, title: 'First' }, { id: 2, title: 'Second' }] };
  printer.onEvent({ event: 'planReady', planReady: { graph: framed, reason: 'r' } });
  printer.onEvent(delta(3, 'Intro.'));
  printer.onEvent(finished(3));
  assert.equal(out.text(), 'outline: 1. First\nplan: ROUTE_PARALLEL, 2 points (r)\n\nIntro.\n\n[1] First\nearly \n');
});
