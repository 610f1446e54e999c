// Stateward from Node.js: a narrated walk through the orchestration contract.
//
//   npm ci
//   STATEWARD_API_URL=127.0.0.1:8470 node index.js
//
// It watches one flow run's transitions, drives a flow run and three task runs through every
// kind of answer SetState gives (ACCEPT, REJECT with a replacement, WAIT, ABORT), then replays
// the stream from a cursor to show that a client can resume it without a gap or a duplicate.
//
// There is no generated code: @grpc/proto-loader reads protos/ when the program starts, so the
// client always matches the contract of the checkout it runs from.

import { randomBytes, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';

// Resolved from this file, not from the working directory, so `node examples/node/index.js`
// works from anywhere in the checkout.
const PROTOS = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'protos');

// The server sends this initial metadata on every WatchTransitions stream: the sequence the
// stream starts after. It is a valid `after_sequence` even if no transition arrived yet.
const START_SEQUENCE_KEY = 'stateward-start-sequence';

const CALL_TIMEOUT_MS = 10_000;

// --- Connecting -----------------------------------------------------------------------------

function loadService() {
  const definition = protoLoader.loadSync('stateward/v1/orchestration.proto', {
    includeDirs: [PROTOS],
    keepCase: true, // field names as in the .proto files (run_id, not runId)
    longs: String, // uint64 sequences do not fit in a JS number; compare them as BigInt
    enums: String, // 'SET_STATE_STATUS_ACCEPT' reads better than 1
    defaults: true, // unset fields read as '' / 0 / null, as in other languages, not undefined
    oneofs: true, // a oneof also says which member is set (StateResult.value: 'json' or 'pickle')
  });
  return grpc.loadPackageDefinition(definition).stateward.v1.OrchestrationService;
}

// The same environment variables as the Python SDK and the `stateward` CLI.
function connect() {
  const address = process.env.STATEWARD_API_URL || '127.0.0.1:8470';
  const { STATEWARD_TLS_CA: ca, STATEWARD_TLS_CERT: cert, STATEWARD_TLS_KEY: key } = process.env;
  if (Boolean(cert) !== Boolean(key)) {
    throw new Error('set both STATEWARD_TLS_CERT and STATEWARD_TLS_KEY for mutual TLS, or neither');
  }
  if (cert && !ca) {
    throw new Error(
      'STATEWARD_TLS_CERT needs STATEWARD_TLS_CA: without a CA the connection is not TLS',
    );
  }
  const credentials = ca
    ? grpc.credentials.createSsl(
        readFileSync(ca),
        key ? readFileSync(key) : null,
        cert ? readFileSync(cert) : null,
      )
    : grpc.credentials.createInsecure();

  // The key travels as plain call metadata rather than as call credentials, because grpc-js
  // refuses call credentials on an insecure channel and a key over plain TCP on loopback is a
  // legitimate set-up.
  const metadata = new grpc.Metadata();
  if (process.env.STATEWARD_API_KEY) {
    metadata.set('authorization', `Bearer ${process.env.STATEWARD_API_KEY}`);
  }

  const OrchestrationService = loadService();
  const client = new OrchestrationService(address, credentials);
  const security = `${ca ? (cert ? 'mutual TLS' : 'TLS') : 'insecure'}, ${
    process.env.STATEWARD_API_KEY ? 'with' : 'no'
  } API key`;
  return { client, metadata, address, security };
}

// The error to report for a failed call. The server's messages say what to fix; a connection
// failure has no server message, so it gets a hint.
function callError(method, error, address) {
  const code = grpc.status[error.code] ?? String(error.code);
  const hint =
    error.code === grpc.status.UNAVAILABLE
      ? `\n  Is a Stateward server listening at ${address} (STATEWARD_API_URL), and does it use` +
        ' TLS exactly when STATEWARD_TLS_CA is set? Start one with `stateward server start`.'
      : '';
  return new Error(`${method} failed with ${code}: ${error.details}${hint}`);
}

// --- The requests the walkthrough makes -------------------------------------------------------

class Stateward {
  constructor({ client, metadata, address }) {
    this.client = client;
    this.metadata = metadata;
    this.address = address;
  }

  /** One unary RPC, as a promise. */
  call(method, request) {
    const deadline = new Date(Date.now() + CALL_TIMEOUT_MS);
    return new Promise((resolve, reject) => {
      this.client[method](request, this.metadata, { deadline }, (error, response) =>
        error ? reject(callError(method, error, this.address)) : resolve(response),
      );
    });
  }

  /** Proposes a state and prints the decision. Every answer, even ABORT, is a normal response. */
  async propose(runId, state) {
    const answer = await this.call('SetState', { run_id: runId, state });
    console.log(`   SetState ${shortType(state.type)} -> ${describeAnswer(answer)}`);
    return answer;
  }

  /**
   * Proposes until the server decides: WAIT writes nothing and asks to propose again after
   * `delay_seconds` (a future scheduled time, a full concurrency limit), so a worker sleeps and
   * proposes the same state again.
   */
  async proposeUntilDecided(runId, state, { maxWaits = 20 } = {}) {
    for (let waits = 0; ; waits++) {
      const answer = await this.propose(runId, state);
      if (answer.status !== 'SET_STATE_STATUS_WAIT') return answer;
      if (waits === maxWaits) throw new Error(`still told to WAIT after ${maxWaits} tries`);
      console.log(`   ... sleeping ${answer.delay_seconds.toFixed(2)} s as told`);
      await sleep(answer.delay_seconds * 1000);
    }
  }

  watch(request, label) {
    return new TransitionWatch(this, request, label);
  }

  close() {
    this.client.close();
  }
}

/**
 * One WatchTransitions stream. It prints each transition as it arrives and keeps it, so the
 * walkthrough can wait for a transition it caused and compare a replay with what it saw live.
 */
class TransitionWatch {
  constructor(stateward, request, label) {
    this.label = label;
    this.transitions = [];
    this.error = null;
    this.cancelled = false;
    this.listeners = new Set();
    this.call = stateward.client.WatchTransitions(request, stateward.metadata);

    this.startSequence = new Promise((resolve, reject) => {
      this.call.on('metadata', (metadata) => {
        const [value] = metadata.get(START_SEQUENCE_KEY);
        if (value === undefined) reject(new Error(`the stream sent no ${START_SEQUENCE_KEY}`));
        else resolve(BigInt(value));
      });
      this.call.on('error', (error) => {
        // Cancelling is how a client closes a stream: it ends with CANCELLED, which is no failure.
        if (this.cancelled && error.code === grpc.status.CANCELLED) return;
        this.error = callError('WatchTransitions', error, stateward.address);
        reject(this.error);
        this.notify();
      });
    });
    this.startSequence.catch(() => {}); // reported by the next wait instead

    this.call.on('data', ({ transition }) => {
      this.transitions.push(transition);
      console.log(`      [${this.label}] ${describeTransition(transition)}`);
      this.notify();
    });
    // The server ends a stream only when it shuts down; a live stream ending is an error here.
    this.call.on('end', () => {
      if (!this.cancelled && !this.error) {
        this.error = new Error(`the ${this.label} stream ended: did the server shut down?`);
        this.notify();
      }
    });
  }

  notify() {
    for (const listener of this.listeners) listener();
  }

  /** Resolves once a delivered transition satisfies `predicate`. */
  waitFor(predicate, what, timeoutMs = CALL_TIMEOUT_MS) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => finish(new Error(`no ${what} on the stream after ${timeoutMs} ms`)),
        timeoutMs,
      );
      const check = () => {
        if (this.error) finish(this.error);
        else if (this.transitions.some(predicate)) finish();
      };
      const finish = (error) => {
        clearTimeout(timer);
        this.listeners.delete(check);
        error ? reject(error) : resolve();
      };
      this.listeners.add(check);
      check();
    });
  }

  cancel() {
    this.cancelled = true;
    this.call.cancel();
  }
}

// --- Building requests and reading answers ----------------------------------------------------

const shortType = (type) => type.replace('STATE_TYPE_', '');
const shortStatus = (status) => status.replace('SET_STATE_STATUS_', '');

/** A State to propose: only `type` is required; the name defaults to the capitalised type. */
function proposal(type, { name, message, details, json } = {}) {
  const state = { type: `STATE_TYPE_${type}` };
  if (name) state.name = name;
  if (message) state.message = message;
  if (details) state.details = details;
  // JSON is the result encoding every language can read (a pickle is for Python clients only).
  if (json !== undefined) state.result = { json: JSON.stringify(json) };
  return state;
}

function toTimestamp(date) {
  const ms = date.getTime();
  return { seconds: String(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1_000_000 };
}

function fromTimestamp({ seconds, nanos }) {
  return new Date(Number(seconds) * 1000 + Math.floor(nanos / 1_000_000));
}

const clock = (date) => date.toISOString().slice(11, 24); // UTC, 12:34:56.789Z

function describeState(state) {
  if (!state) return '(none)';
  const scheduled = state.details?.scheduled_time;
  return scheduled ? `${state.name} (at ${clock(fromTimestamp(scheduled))})` : state.name;
}

function describeAnswer({ status, state, reason, delay_seconds }) {
  switch (status) {
    case 'SET_STATE_STATUS_ACCEPT':
      return `ACCEPT: now ${describeState(state)}`;
    case 'SET_STATE_STATUS_REJECT':
      // Either the rules wrote `state` in place of the proposal, or nothing was written and
      // `state` is the current one.
      return `REJECT (${reason}): now ${describeState(state)}, a ${shortType(state.type)} state`;
    case 'SET_STATE_STATUS_WAIT':
      return `WAIT ${delay_seconds.toFixed(2)} s (${reason})`;
    default:
      return `${shortStatus(status)} (${reason})`;
  }
}

function describeTransition(t) {
  const kind = t.run_kind === 'RUN_KIND_FLOW_RUN' ? 'flow run' : 'task run';
  const name = t.task_key || t.flow_name;
  return `#${t.sequence} ${kind} ${name}: ${describeState(t.from_state)} -> ${describeState(t.to_state)}`;
}

/** Stops the walkthrough unless the answer is the one it demonstrates. */
function expectAnswer(answer, status, name) {
  const got = `${shortStatus(answer.status)} ${answer.state?.name ?? '(no state)'}`;
  if (answer.status !== `SET_STATE_STATUS_${status}` || (name && answer.state?.name !== name)) {
    const why = answer.reason ? ` (${answer.reason})` : '';
    throw new Error(`expected ${status}${name ? ` ${name}` : ''}, got ${got}${why}`);
  }
  return answer;
}

// --- The walkthrough ------------------------------------------------------------------------

async function startFlowRun(sw, flowRunId) {
  console.log('\n2. Create a flow run (Pending) and start it');
  const { flow_run: flowRun } = await sw.call('CreateFlowRun', {
    flow_run: { id: flowRunId, flow_name: 'node-example', state: proposal('PENDING') },
  });
  console.log(`   CreateFlowRun: ${flowRun.name}, state ${flowRun.state.name}`);
  expectAnswer(await sw.propose(flowRunId, proposal('RUNNING')), 'ACCEPT', 'Running');
}

async function retryOnce(sw, flowRunId) {
  console.log('\n3. A task run with one retry: it fails once, is retried, and completes');
  const { task_run: taskRun } = await sw.call('CreateTaskRun', {
    task_run: {
      task_key: 'fetch-orders',
      flow_run_id: flowRunId,
      // Half a second before the retry. With no delay, the server would retry at once: REJECT
      // with Retrying (RUNNING) in place of the failure, and no AwaitingRetry written.
      retry_policy: { retries: 1, retry_delay_seconds: [0.5] },
      state: proposal('PENDING'),
    },
  });
  console.log(`   CreateTaskRun fetch-orders (retries: 1): task run ${taskRun.id}`);
  expectAnswer(await sw.propose(taskRun.id, proposal('RUNNING')), 'ACCEPT', 'Running');

  // The failure is not written as proposed: with a retry left, the server writes AwaitingRetry
  // in its place, so REJECT here is good news. Adopt the state it returns.
  const failed = await sw.propose(
    taskRun.id,
    proposal('FAILED', { message: 'ConnectionError: the orders service timed out' }),
  );
  expectAnswer(failed, 'REJECT', 'AwaitingRetry');
  console.log(
    `   (the server wrote ${failed.state.name} instead, keeping the message: "${failed.state.message}")`,
  );

  // AwaitingRetry is SCHEDULED at now + the retry delay: proposing RUNNING before then is a WAIT.
  expectAnswer(await sw.proposeUntilDecided(taskRun.id, proposal('RUNNING')), 'ACCEPT', 'Retrying');
  const done = expectAnswer(
    await sw.propose(taskRun.id, proposal('COMPLETED', { json: { orders: 2, total: 42 } })),
    'ACCEPT',
    'Completed',
  );
  console.log(`   result stored with the state: ${done.state.result.json}`);
}

async function abortOnClosedTag(sw, flowRunId) {
  console.log('\n4. ABORT: a task run whose tag has a concurrency limit of 0');
  // A fresh tag per run: the database outlives this program and a tag has at most one limit.
  const tag = `node-example-${randomBytes(3).toString('hex')}`;
  await sw.call('CreateConcurrencyLimit', { concurrency_limit: { tag, limit: 0 } });
  console.log(`   CreateConcurrencyLimit: tag ${tag}, limit 0`);
  try {
    const { task_run: taskRun } = await sw.call('CreateTaskRun', {
      task_run: {
        task_key: 'restricted',
        flow_run_id: flowRunId,
        tags: [tag],
        state: proposal('PENDING'),
      },
    });
    console.log(`   CreateTaskRun restricted (tags: [${tag}]): task run ${taskRun.id}`);
    const answer = expectAnswer(await sw.propose(taskRun.id, proposal('RUNNING')), 'ABORT');
    console.log(`   ABORT reason: ${answer.reason}`);
    console.log(`   (nothing was written: the run is still ${answer.state.name})`);
    // ABORT means this run will not start: the worker gives it up rather than leave it
    // Pending for ever, and says why in the state's message.
    expectAnswer(
      await sw.propose(
        taskRun.id,
        proposal('CANCELLED', { message: `not run: ${answer.reason}` }),
      ),
      'ACCEPT',
      'Cancelled',
    );
  } finally {
    await sw.call('DeleteConcurrencyLimit', { tag });
    console.log(`   DeleteConcurrencyLimit: tag ${tag}`);
  }
}

async function waitForScheduledTime(sw, flowRunId) {
  console.log('\n5. WAIT: a task run scheduled 1.5 s from now');
  const at = new Date(Date.now() + 1500);
  const { task_run: taskRun } = await sw.call('CreateTaskRun', {
    task_run: {
      task_key: 'scheduled-report',
      flow_run_id: flowRunId,
      state: proposal('SCHEDULED', { details: { scheduled_time: toTimestamp(at) } }),
    },
  });
  console.log(
    `   CreateTaskRun scheduled-report, Scheduled at ${clock(at)}: task run ${taskRun.id}`,
  );
  // Pending inherits the scheduled time, so the run still may not start before it.
  expectAnswer(await sw.propose(taskRun.id, proposal('PENDING')), 'ACCEPT', 'Pending');
  const wait = expectAnswer(await sw.propose(taskRun.id, proposal('RUNNING')), 'WAIT');
  console.log(`   ... sleeping ${wait.delay_seconds.toFixed(2)} s as told, then proposing again`);
  await sleep(wait.delay_seconds * 1000);
  // Timers and clocks are not exact: a second WAIT is possible, and handled the same way.
  expectAnswer(await sw.proposeUntilDecided(taskRun.id, proposal('RUNNING')), 'ACCEPT', 'Running');
  expectAnswer(
    await sw.propose(taskRun.id, proposal('COMPLETED', { json: 'report.pdf' })),
    'ACCEPT',
    'Completed',
  );
}

async function resumeFromCursor(sw, live, flowRunId, startSequence) {
  console.log("\n7. Resume: replay the flow run's transitions from a cursor");
  const seen = live.transitions;
  const last = seen.at(-1).sequence;
  live.cancel();
  console.log(
    `   the live stream delivered ${seen.length} transitions, the last #${last}; cancelled it`,
  );
  console.log(`   (after a disconnect, reconnecting with after_sequence=${last} misses nothing)`);

  // Replaying from the start sequence of the first stream must give back exactly what it saw.
  console.log(`   WatchTransitions(flow_run_ids=[${flowRunId}], after_sequence=${startSequence})`);
  const replay = sw.watch(
    { flow_run_ids: [flowRunId], after_sequence: String(startSequence) },
    'replay',
  );
  try {
    await replay.waitFor((t) => t.sequence === last, `transition #${last}`);
    // Past the replay the stream is live: a short pause lets any duplicate show itself.
    await sleep(200);
    const key = (t) => `${t.sequence} ${t.run_id} ${t.to_state.id}`;
    const expected = seen.map(key).join('\n');
    const got = replay.transitions.map(key).join('\n');
    if (got !== expected) {
      throw new Error(
        `the replay differs from the live stream:\nlive:\n${expected}\nreplay:\n${got}`,
      );
    }
    const ordered = replay.transitions.every(
      (t, i, all) => i === 0 || BigInt(all[i - 1].sequence) < BigInt(t.sequence),
    );
    if (!ordered) throw new Error('the replay is not in sequence order');
    console.log(
      `   resume check OK: the replay gave the same ${seen.length} transitions, in order, no duplicate`,
    );
  } finally {
    replay.cancel();
  }
}

async function main() {
  const connection = connect();
  const sw = new Stateward(connection);
  console.log(`Stateward from Node.js: server ${connection.address} (${connection.security})`);

  // The client may choose a run's id. Choosing it up front lets the stream filter on the flow
  // run before it exists, so it sees the run's very first transition live.
  const flowRunId = randomUUID();
  console.log("\n1. Watch the flow run's transitions (its task runs included)");
  console.log(`   flow run id: ${flowRunId}`);
  const live = sw.watch({ flow_run_ids: [flowRunId] }, 'watch');
  try {
    // Waiting for the initial metadata proves the stream is established (and authorised)
    // before anything it should see is written.
    const startSequence = await live.startSequence;
    console.log(
      `   WatchTransitions(flow_run_ids=[${flowRunId}]): open, starts after #${startSequence}`,
    );

    await startFlowRun(sw, flowRunId);
    await retryOnce(sw, flowRunId);
    await abortOnClosedTag(sw, flowRunId);
    await waitForScheduledTime(sw, flowRunId);

    console.log('\n6. Complete the flow run');
    expectAnswer(
      await sw.propose(flowRunId, proposal('COMPLETED', { json: { ok: true } })),
      'ACCEPT',
      'Completed',
    );
    // The server answers once the transition is written; the stream delivers it a moment later.
    await live.waitFor(
      (t) => t.run_id === flowRunId && t.to_state.type === 'STATE_TYPE_COMPLETED',
      'Completed transition of the flow run',
    );

    await resumeFromCursor(sw, live, flowRunId, startSequence);
    console.log('\nDone: every answer was the one expected.');
  } finally {
    live.cancel();
    sw.close();
  }
}

main().catch((error) => {
  console.error(`\nERROR: ${error.message}`);
  // Open streams would keep the process alive; exit now.
  process.exit(1);
});
