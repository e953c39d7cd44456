// The sidebar's data, apart from the DOM: requests to the server extension's REST API and the rows the
// panel draws from its run list. Nothing here imports JupyterLab, so jest runs it in plain Node.

/** Where a run is; "lost" (its worker died) and "damaged" (unreadable run directory) are the server's. */
export type RunStatus =
  | 'pending'
  | 'running'
  | 'finished'
  | 'failed'
  | 'cancelled'
  | 'lost'
  | 'damaged';

/**
 * One run as `GET /nbfinetune/api/runs` lists it: `nbfinetune.runs.RunSummary.to_dict()`. The server
 * writes NaN and infinities as null, so every float may be null.
 */
export interface IRunSummary {
  run_id: string;
  status: RunStatus;
  name: string | null;
  model: string | null;
  data: string | null;
  backend: string | null;
  step: number;
  total_steps: number | null;
  last_loss: number | null;
  eval_loss: number | null;
  metrics: Record<string, number | null>;
  base_metrics: Record<string, number | null>;
  adapter_path: string | null;
  /** With early stopping: the step whose adapter the run kept. */
  best_step: number | null;
  error: string | null;
  /** Unix seconds. */
  started: number | null;
  ended: number | null;
  /** GPU spend so far in USD; null where nothing is billed (local runs). */
  cost_usd: number | null;
  /** Train loss downsampled for sparklines. */
  loss_trace: (number | null)[];
}

/** What the panel draws for one run. */
export interface IRunRow {
  runId: string;
  label: string;
  status: RunStatus;
  /** Pending or running: offers Cancel instead of Delete, and keeps the list refreshing fast. */
  active: boolean;
  /** 0 to 100; 0 while the total is unknown. */
  percent: number;
  steps: string;
  loss: string;
  /** The sparkline's SVG polyline points; null when there are fewer than two losses to draw. */
  spark: string | null;
}

/** A request to the REST API: the path under `nbfinetune/api/`, as `fetch` takes it. */
export type Fetch = (path: string, init?: RequestInit) => Promise<Response>;

/** A request the server refused or answered with something that is not the expected JSON. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

export const ACTIVE: ReadonlySet<RunStatus> = new Set(['pending', 'running']);
export const SPARK_WIDTH = 120;
export const SPARK_HEIGHT = 22;

/** JSON from the API; an error status is an ApiError carrying Jupyter's `message` when it sent one. */
export async function requestJson<T>(
  fetch: Fetch,
  path: string,
  init: RequestInit = {}
): Promise<T> {
  const response = await fetch(path, init);
  if (!response.ok) {
    throw new ApiError(response.status, await errorMessage(response));
  }
  try {
    return (await response.json()) as T;
  } catch (error) {
    // e.g. a proxy's HTML page with status 200
    throw new ApiError(
      response.status,
      `the server's answer to ${path} is not JSON (${error})`
    );
  }
}

async function errorMessage(response: Response): Promise<string> {
  const fallback = `${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.json();
    return typeof body?.message === 'string' && body.message
      ? body.message
      : fallback;
  } catch {
    return fallback; // an error page that is not JSON
  }
}

/** Every run's summary, newest first (the server's order). */
export async function fetchRuns(fetch: Fetch): Promise<IRunSummary[]> {
  const body = await requestJson<{ runs?: unknown }>(fetch, 'runs');
  if (!Array.isArray(body?.runs)) {
    throw new ApiError(200, 'the run list has no "runs" array');
  }
  return body.runs as IRunSummary[];
}

export function cancelRun(fetch: Fetch, runId: string): Promise<unknown> {
  return requestJson(fetch, `runs/${encodeURIComponent(runId)}/cancel`, {
    method: 'POST',
    body: '{}'
  });
}

export function deleteRun(fetch: Fetch, runId: string): Promise<unknown> {
  return requestJson(fetch, `runs/${encodeURIComponent(runId)}`, {
    method: 'DELETE'
  });
}

export function isActive(run: IRunSummary): boolean {
  return ACTIVE.has(run.status);
}

export function toRow(run: IRunSummary): IRunRow {
  const total = run.total_steps;
  const loss = run.last_loss === null ? '–' : run.last_loss.toFixed(4);
  const cost = run.cost_usd ? ` · $${run.cost_usd.toFixed(2)}` : '';
  return {
    runId: run.run_id,
    label: run.name || run.run_id,
    status: run.status,
    active: isActive(run),
    percent: total ? Math.min(100, (100 * run.step) / total) : 0,
    steps: `step ${run.step}/${total ?? '?'}`,
    loss: `loss ${loss}${cost}`,
    spark: sparkPoints(run.loss_trace ?? [])
  };
}

/** Polyline points scaled into the sparkline's box; the lowest loss touches the bottom. */
export function sparkPoints(
  trace: (number | null)[],
  width = SPARK_WIDTH,
  height = SPARK_HEIGHT
): string | null {
  const values = trace.filter(
    (v): v is number => typeof v === 'number' && Number.isFinite(v)
  );
  if (values.length < 2) {
    return null;
  }
  const low = Math.min(...values);
  const span = Math.max(...values) - low || 1;
  return values
    .map((v, i) => {
      const x = (i / (values.length - 1)) * width;
      const y = height - 1 - ((v - low) / span) * (height - 2);
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    })
    .join(' ');
}

/** Poll frequency in ms: fast while something trains, 4x slower when idle (a run started from a
 * notebook still shows up), backing off on errors up to a minute (or the idle interval if longer). */
export function pollFrequency(
  intervalMs: number,
  active: boolean
): { interval: number; backoff: boolean; max: number } {
  const interval = active ? intervalMs : intervalMs * 4;
  return { interval, backoff: true, max: Math.max(60_000, interval) };
}
