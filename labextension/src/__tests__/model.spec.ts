// The sidebar's model against a fake REST API: the rows drawn from a run list, and what each kind of
// failure (an error status, a page that is not JSON, a body of the wrong shape, no network) turns into.
import {
  ApiError,
  cancelRun,
  deleteRun,
  Fetch,
  fetchRuns,
  IRunSummary,
  pollFrequency,
  requestJson,
  sparkPoints,
  toRow
} from '../model';

function summary(fields: Partial<IRunSummary> = {}): IRunSummary {
  return {
    run_id: 'run-1',
    status: 'finished',
    name: null,
    model: 'tiny',
    data: 'sample:people',
    backend: 'local',
    step: 3,
    total_steps: 3,
    last_loss: 1.23456,
    eval_loss: null,
    metrics: {},
    base_metrics: {},
    adapter_path: '/runs/run-1/adapter',
    best_step: null,
    error: null,
    started: 1700000000,
    ended: 1700000010,
    cost_usd: null,
    loss_trace: [3, 2, 1],
    ...fields
  };
}

type Call = { path: string; init?: RequestInit };

/** A Fetch that answers every request with `reply` and records what was asked. */
function fakeFetch(reply: () => Response): { fetch: Fetch; calls: Call[] } {
  const calls: Call[] = [];
  const fetch: Fetch = async (path, init) => {
    calls.push({ path, init });
    return reply();
  };
  return { fetch, calls };
}

const json = (body: unknown, status = 200) =>
  new Response(JSON.stringify(body), {
    status,
    headers: { 'Content-Type': 'application/json' }
  });

describe('fetchRuns', () => {
  it('returns the runs of GET runs in the order the server sent', async () => {
    const runs = [summary({ run_id: 'new' }), summary({ run_id: 'old' })];
    const { fetch, calls } = fakeFetch(() => json({ runs }));
    expect(await fetchRuns(fetch)).toEqual(runs);
    expect(calls.map(c => c.path)).toEqual(['runs']);
  });

  it('rejects an error status with the message Jupyter sent', async () => {
    const { fetch } = fakeFetch(() => json({ message: 'Forbidden' }, 403));
    const error = await fetchRuns(fetch).catch(e => e);
    expect(error).toBeInstanceOf(ApiError);
    expect(error.status).toBe(403);
    expect(error.message).toBe('Forbidden');
  });

  it('rejects an error page that is not JSON without trying to parse it as runs', async () => {
    const { fetch } = fakeFetch(
      () =>
        new Response('<html>Bad Gateway</html>', {
          status: 502,
          statusText: 'Bad Gateway'
        })
    );
    const error = await fetchRuns(fetch).catch(e => e);
    expect(error).toBeInstanceOf(ApiError);
    expect(error.status).toBe(502);
    expect(error.message).toBe('502 Bad Gateway');
  });

  it('rejects a 200 answer that is not JSON', async () => {
    const { fetch } = fakeFetch(() => new Response('<html>login</html>'));
    await expect(fetchRuns(fetch)).rejects.toThrow(
      "the server's answer to runs is not JSON"
    );
  });

  it('rejects JSON without a runs array', async () => {
    const { fetch } = fakeFetch(() => json({ items: [] }));
    await expect(fetchRuns(fetch)).rejects.toThrow(
      'the run list has no "runs" array'
    );
    const nothing = fakeFetch(() => json(null));
    await expect(fetchRuns(nothing.fetch)).rejects.toThrow(ApiError);
  });

  it('passes a network failure on as it is', async () => {
    const fetch: Fetch = () => Promise.reject(new TypeError('Failed to fetch'));
    await expect(fetchRuns(fetch)).rejects.toThrow('Failed to fetch');
  });
});

describe('cancelRun and deleteRun', () => {
  it('POST .../cancel and DELETE the run, with the id escaped', async () => {
    const { fetch, calls } = fakeFetch(() => json({ ok: true }));
    await cancelRun(fetch, 'a b');
    await deleteRun(fetch, 'a b');
    expect(calls).toEqual([
      { path: 'runs/a%20b/cancel', init: { method: 'POST', body: '{}' } },
      { path: 'runs/a%20b', init: { method: 'DELETE' } }
    ]);
  });

  it('reject a 409 (the run is running again) with its message', async () => {
    const { fetch } = fakeFetch(() =>
      json({ message: 'run run-1 is running' }, 409)
    );
    await expect(deleteRun(fetch, 'run-1')).rejects.toMatchObject({
      status: 409,
      message: 'run run-1 is running'
    });
  });

  it('fall back to the status when the error body has no message', async () => {
    const { fetch } = fakeFetch(() => json({}, 500));
    await expect(requestJson(fetch, 'runs')).rejects.toMatchObject({
      status: 500,
      message: '500'
    });
  });
});

describe('toRow', () => {
  it('draws a finished run: label, progress, loss, a sparkline and no Cancel', () => {
    const row = toRow(summary({ name: 'finished-one' }));
    expect(row).toEqual({
      runId: 'run-1',
      label: 'finished-one',
      status: 'finished',
      active: false,
      percent: 100,
      steps: 'step 3/3',
      loss: 'loss 1.2346',
      spark: '0.0,1.0 60.0,11.0 120.0,21.0'
    });
  });

  it('marks pending and running runs active', () => {
    expect(toRow(summary({ status: 'running' })).active).toBe(true);
    expect(toRow(summary({ status: 'pending' })).active).toBe(true);
    for (const status of ['failed', 'cancelled', 'lost', 'damaged'] as const) {
      expect(toRow(summary({ status })).active).toBe(false);
    }
  });

  it('shows what is not known yet: no name, no total, no loss', () => {
    const row = toRow(
      summary({
        status: 'pending',
        step: 0,
        total_steps: null,
        last_loss: null,
        loss_trace: []
      })
    );
    expect(row).toMatchObject({
      label: 'run-1',
      percent: 0,
      steps: 'step 0/?',
      loss: 'loss –',
      spark: null
    });
  });

  it('caps progress at 100% and adds a Modal run’s cost', () => {
    const row = toRow(summary({ step: 12, total_steps: 10, cost_usd: 0.456 }));
    expect(row.percent).toBe(100);
    expect(row.loss).toBe('loss 1.2346 · $0.46');
  });
});

describe('sparkPoints', () => {
  it('needs two finite losses', () => {
    expect(sparkPoints([])).toBeNull();
    expect(sparkPoints([1])).toBeNull();
    expect(sparkPoints([1, null])).toBeNull();
  });

  it('skips losses the server sent as null (NaN) and draws equal losses along the bottom', () => {
    expect(sparkPoints([2, null, 2], 10, 12)).toBe('0.0,11.0 10.0,11.0');
  });
});

describe('pollFrequency', () => {
  it('is the setting while a run is active, 4x slower when idle, and backs off', () => {
    expect(pollFrequency(2000, true)).toEqual({
      interval: 2000,
      backoff: true,
      max: 60_000
    });
    expect(pollFrequency(2000, false).interval).toBe(8000);
    // A long setting still polls: the back-off ceiling is never below the interval.
    expect(pollFrequency(30_000, false).max).toBe(120_000);
  });
});
