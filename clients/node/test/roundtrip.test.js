'use strict';
// Against a real Espalier server: ESPALIER_TARGET=host:port (and ESPALIER_TOKEN when the server
// wants one). tests/integration/clients/test_node_client.py starts a server with the small model
// and runs this; without ESPALIER_TARGET these tests are skipped, and that pytest fails on skips.
const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { execFile } = require('node:child_process');
const { connect, EspalierError } = require('../client');

const TARGET = process.env.ESPALIER_TARGET;
const TOKEN = process.env.ESPALIER_TOKEN || undefined;
const SKIP = TARGET ? false : 'ESPALIER_TARGET is not set (host:port of a running Espalier server)';
const QUESTION = 'What are the most effective ways to deal with stress?';
const SHORT = { pointMaxTokens: 8, maxPoints: 2 }; // the small model on 2 CPU cores: keep it brief

async function withClient(options, body) {
  const client = connect(TARGET, { token: TOKEN, deadlineMs: 120_000, ...options });
  try {
    await client.ready(30_000);
    return await body(client);
  } finally {
    client.close();
  }
}

function expectCode(codeName, check = () => {}) {
  return (err) => {
    assert.ok(err instanceof EspalierError, `expected an EspalierError, got ${err}`);
    assert.equal(err.codeName, codeName, err.message);
    check(err);
    return true;
  };
}

test('Plan then Expand: every point streams text, then the answer is done', { skip: SKIP }, async () => {
  await withClient({}, async (client) => {
    const plan = await client.plan(QUESTION, { mode: 'sot', settings: SHORT });
    assert.equal(plan.graph.route, 'ROUTE_PARALLEL');
    assert.ok(plan.graph.nodes.length >= 2, JSON.stringify(plan.graph));
    const events = [];
    for await (const event of client.expand({ question: QUESTION, graph: plan.graph, settings: SHORT })) {
      events.push(event);
    }
    const of = (kind) => events.filter((e) => e.event === kind).map((e) => e[kind]);
    const ids = plan.graph.nodes.map((n) => n.id).sort();
    assert.deepEqual([...new Set(of('nodeDelta').map((d) => d.nodeId))].sort(), ids, 'text for every point');
    assert.deepEqual(of('nodeFinished').map((f) => f.nodeId).sort(), ids);
    for (const finished of of('nodeFinished')) {
      const streamed = of('nodeDelta').filter((d) => d.nodeId === finished.nodeId).map((d) => d.text).join('');
      assert.equal(streamed, finished.text, 'the deltas add up to the finished text');
    }
    const last = events.at(-1);
    assert.equal(last.event, 'answerDone');
    assert.equal(last.answerDone.route, 'ROUTE_PARALLEL');
    assert.ok(last.answerDone.text.trim().length > 0);
    assert.deepEqual(last.answerDone.failedNodeIds, []);
  });
});

test('Answer in one call: the outline arrives before the plan, then every point streams text', { skip: SKIP },
  async () => {
    const client = connect(TARGET, { token: TOKEN });
    try {
      const kinds = [];
      const outline = [];
      for await (const event of client.answer(QUESTION, { mode: 'sot', settings: SHORT })) {
        kinds.push(event.event);
        if (event.event === 'nodePlanned') outline.push(event.nodePlanned.node.title);
      }
      assert.ok(outline.length >= 2, JSON.stringify(kinds));
      assert.deepEqual(kinds.slice(0, outline.length + 1), [...outline.map(() => 'nodePlanned'), 'planReady']);
      assert.equal(kinds.at(-1), 'answerDone');
    } finally {
      client.close();
    }
  });

test('bad input is INVALID_ARGUMENT, naming the field', { skip: SKIP }, async () => {
  await withClient({}, async (client) => {
    await assert.rejects(client.plan('   '), expectCode('INVALID_ARGUMENT', (e) => assert.equal(e.field, 'question')));
    const cycle = { route: 'ROUTE_GRAPH', nodes: [{ id: 1, title: 'a', dependsOn: [2] }, { id: 2, title: 'b', dependsOn: [1] }] };
    await assert.rejects(async () => {
      for await (const event of client.expand({ question: QUESTION, graph: cycle })) assert.fail(event);
    }, expectCode('INVALID_ARGUMENT'));
  });
});

test('system text and history: a direct answer with them completes', { skip: SKIP }, async () => {
  await withClient({}, async (client) => {
    // Only that the call succeeds: the small model's language and content are not checked here.
    const history = [{ role: 'user', content: 'I sleep badly.' }, { role: 'assistant', content: 'Keep a routine.' }];
    const options = { mode: 'direct', settings: { answerMaxTokens: 8 }, system: 'Always answer in French.', history };
    const events = [];
    for await (const event of client.answer(QUESTION, options)) events.push(event);
    const last = events.at(-1);
    assert.equal(last.event, 'answerDone', JSON.stringify(events.map((e) => e.event)));
    assert.equal(last.answerDone.route, 'ROUTE_DIRECT');
    assert.deepEqual(last.answerDone.failedNodeIds, []);
  });
});

test('an unknown role in the history is INVALID_ARGUMENT naming the message', { skip: SKIP }, async () => {
  await withClient({}, async (client) => {
    const history = [{ role: 'robot', content: 'beep' }];
    await assert.rejects(client.plan(QUESTION, { history }), expectCode('INVALID_ARGUMENT', (e) => {
      assert.equal(e.code, 3);
      assert.match(e.message, /messages\[0\]/);
      assert.match(e.field, /^messages\[0\]/);
    }));
  });
});

test('a deadline too short to plan in is DEADLINE_EXCEEDED', { skip: SKIP }, async () => {
  await withClient({}, async (client) => {
    await assert.rejects(client.plan(QUESTION, { mode: 'sot', deadlineMs: 1 }), expectCode('DEADLINE_EXCEEDED'));
  });
});

test('leaving an Expand early cancels it cleanly; the channel still works', { skip: SKIP }, async () => {
  await withClient({}, async (client) => {
    const graph = { route: 'ROUTE_PARALLEL', nodes: [{ id: 1, title: 'Exercise' }, { id: 2, title: 'Sleep' }] };
    let seen = 0;
    for await (const event of client.expand({ question: QUESTION, graph, settings: SHORT })) {
      seen += 1;
      if (event.event === 'nodeDelta') break;
    }
    assert.ok(seen >= 1);
    await assert.rejects(client.plan(''), expectCode('INVALID_ARGUMENT'));
  });
});

test('without the shared token the server says UNAUTHENTICATED', { skip: SKIP || (!TOKEN && 'ESPALIER_TOKEN is not set') }, async () => {
  await withClient({ token: undefined }, async (client) => {
    await assert.rejects(client.plan(QUESTION), expectCode('UNAUTHENTICATED'));
  });
});

test('the example prints every point under its header and a summary line', { skip: SKIP }, async () => {
  const script = path.join(__dirname, '..', 'examples', 'expand.js');
  const args = [script, '--target', TARGET, '--mode', 'sot', '--point-tokens', '8', '--max-points', '2', QUESTION];
  const { stdout } = await new Promise((resolve, reject) => {
    execFile(process.execPath, args, { timeout: 120_000 }, (err, out, errOut) =>
      (err ? reject(new Error(`${err.message}\n${errOut}`)) : resolve({ stdout: out })));
  });
  // the outline as the skeleton is written, then the plan, then the points
  assert.match(stdout, /^outline: 1\. .+\n(outline: \d+\. .+\n)*plan: ROUTE_PARALLEL, \d+ points/);
  assert.match(stdout, /\n\[1\] .+\n/);
  assert.match(stdout, /\n\[2\] .+\n/);
  assert.match(stdout, /\ndone: ROUTE_PARALLEL, \d+ points, 0 failed, [1-9]\d* tokens, first token [\d.]+ s, total [\d.]+ s\n$/);
});
