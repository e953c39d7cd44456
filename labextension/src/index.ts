// The "Fine-tunes" sidebar: every nbfinetune run from the server's REST API, refreshed while runs are
// active. Clicking a run inserts and executes a cell that attaches its dashboard in the current notebook.
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Dialog, ICommandPalette, showDialog } from '@jupyterlab/apputils';
import { URLExt } from '@jupyterlab/coreutils';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { ServerConnection } from '@jupyterlab/services';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';

const PLUGIN_ID = 'nbfinetune:plugin';
const ACTIVE = new Set(['pending', 'running']);
const TEMPLATE = '%load_ext nbfinetune\nrun = %finetune --data sample:people --steps 40';

const icon = new LabIcon({
  name: 'nbfinetune:runs',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><path class="jp-icon3" fill="#616161" ' +
    'd="M3 17l5-6 4 4 6-8 3 3v8H3z"/></svg>'
});

interface RunSummary {
  run_id: string;
  status: string;
  name: string | null;
  model: string | null;
  step: number;
  total_steps: number | null;
  last_loss: number | null;
  eval_loss: number | null;
  metrics: Record<string, number>;
  loss_trace: number[];
  cost_usd?: number | null;
}

async function api<T>(path: string, init: RequestInit = {}): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'nbfinetune', 'api', path);
  const response = await ServerConnection.makeRequest(url, init, settings);
  const body = await response.json();
  if (!response.ok) {
    throw new Error(body.message || response.statusText);
  }
  return body as T;
}

function sparkline(values: number[], width = 120, height = 22): SVGSVGElement {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('width', String(width));
  svg.setAttribute('height', String(height));
  svg.classList.add('nbft-spark');
  if (values.length > 1) {
    const low = Math.min(...values);
    const span = Math.max(...values) - low || 1;
    const points = values
      .map((v, i) => `${((i / (values.length - 1)) * width).toFixed(1)},${(height - 1 - ((v - low) / span) * (height - 2)).toFixed(1)}`)
      .join(' ');
    const line = document.createElementNS(ns, 'polyline');
    line.setAttribute('points', points);
    line.setAttribute('fill', 'none');
    line.setAttribute('stroke', '#1f77b4');
    line.setAttribute('stroke-width', '1.5');
    svg.appendChild(line);
  }
  return svg;
}

export class RunsPanel extends Widget {
  intervalMs = 2000;
  private timer: number | undefined;
  private list: HTMLDivElement;

  constructor(private tracker: INotebookTracker) {
    super();
    this.id = 'nbfinetune-runs';
    this.title.icon = icon;
    this.title.caption = 'Fine-tunes';
    this.addClass('nbft-panel');
    const heading = document.createElement('h2');
    heading.textContent = 'Fine-tunes';
    this.list = document.createElement('div');
    this.node.append(heading, this.list);
  }

  protected onAfterAttach(): void {
    void this.refresh();
  }

  dispose(): void {
    window.clearTimeout(this.timer);
    super.dispose();
  }

  async refresh(): Promise<void> {
    window.clearTimeout(this.timer);
    let active = false;
    try {
      const { runs } = await api<{ runs: RunSummary[] }>('runs');
      active = runs.some(run => ACTIVE.has(run.status));
      this.render(runs);
    } catch (error) {
      this.list.replaceChildren(Object.assign(document.createElement('p'), {
        className: 'nbft-error', textContent: `Cannot list runs: ${error}`
      }));
    }
    // Fast while something trains, slower when idle (a run started from a notebook still shows up).
    this.timer = window.setTimeout(() => void this.refresh(), active ? this.intervalMs : this.intervalMs * 4);
  }

  private render(runs: RunSummary[]): void {
    if (!runs.length) {
      this.list.replaceChildren(Object.assign(document.createElement('p'), {
        className: 'nbft-empty', textContent: 'No runs yet. Start one with %finetune in a notebook.'
      }));
      return;
    }
    this.list.replaceChildren(...runs.map(run => this.item(run)));
  }

  private item(run: RunSummary): HTMLElement {
    const node = document.createElement('div');
    node.className = 'nbft-run';
    node.dataset.runId = run.run_id;
    node.dataset.status = run.status;
    node.title = `Click to attach run ${run.run_id} in the current notebook`;
    const head = document.createElement('div');
    head.className = 'nbft-run-head';
    const label = Object.assign(document.createElement('span'), {
      className: 'nbft-run-id', textContent: run.name || run.run_id
    });
    const badge = Object.assign(document.createElement('span'), { className: 'nbft-badge', textContent: run.status });
    badge.dataset.status = run.status;
    head.append(label, badge);
    const bar = document.createElement('div');
    bar.className = 'nbft-progress';
    const fill = document.createElement('div');
    fill.style.width = `${run.total_steps ? Math.min(100, (100 * run.step) / run.total_steps) : 0}%`;
    bar.appendChild(fill);
    const meta = document.createElement('div');
    meta.className = 'nbft-meta';
    const loss = run.last_loss === null ? '–' : run.last_loss.toFixed(4);
    const cost = run.cost_usd ? ` · $${run.cost_usd.toFixed(2)}` : '';
    meta.append(
      Object.assign(document.createElement('span'), { textContent: `step ${run.step}/${run.total_steps ?? '?'}` }),
      Object.assign(document.createElement('span'), { className: 'nbft-loss', textContent: `loss ${loss}${cost}` })
    );
    node.append(head, bar, meta, sparkline(run.loss_trace || []));
    if (ACTIVE.has(run.status)) {
      const cancel = Object.assign(document.createElement('button'), {
        className: 'jp-Button jp-mod-styled jp-mod-warn nbft-cancel', textContent: 'Cancel'
      });
      cancel.onclick = event => {
        event.stopPropagation();
        void this.cancel(run.run_id);
      };
      node.appendChild(cancel);
    } else {
      const remove = Object.assign(document.createElement('button'), {
        className: 'jp-Button jp-mod-styled nbft-delete', textContent: 'Delete', title: 'Delete this run and its files'
      });
      remove.onclick = event => {
        event.stopPropagation();
        void this.delete(run);
      };
      node.appendChild(remove);
    }
    node.onclick = () => void this.attach(run.run_id);
    return node;
  }

  async attach(runId: string): Promise<void> {
    await insertAndRun(this.tracker, `import nbfinetune as nbft\nrun = nbft.attach(${JSON.stringify(runId)})`, true);
  }

  async cancel(runId: string): Promise<void> {
    const result = await showDialog({
      title: 'Cancel fine-tune?',
      body: `Run ${runId} stops after its current step; its adapter and a checkpoint are kept.`,
      buttons: [Dialog.cancelButton({ label: 'Keep running' }), Dialog.warnButton({ label: 'Cancel run' })]
    });
    if (result.button.accept) {
      await api(`runs/${encodeURIComponent(runId)}/cancel`, { method: 'POST', body: '{}' });
      void this.refresh();
    }
  }

  async delete(run: RunSummary): Promise<void> {
    const label = run.name ? `${run.name} (${run.run_id})` : run.run_id;
    const result = await showDialog({
      title: 'Delete fine-tune?',
      body: `Run ${label} and everything in its directory (events, adapter, checkpoints) are deleted for good.`,
      buttons: [Dialog.cancelButton({ label: 'Keep it' }), Dialog.warnButton({ label: 'Delete run' })]
    });
    if (!result.button.accept) {
      return;
    }
    try {
      await api(`runs/${encodeURIComponent(run.run_id)}`, { method: 'DELETE' });
    } catch (error) {
      // e.g. 409: the run started again (resume) since the list was drawn
      await showDialog({ title: 'Not deleted', body: String(error), buttons: [Dialog.okButton()] });
    }
    void this.refresh();
  }
}

async function insertAndRun(tracker: INotebookTracker, source: string, run: boolean): Promise<void> {
  const panel = tracker.currentWidget;
  if (!panel) {
    await showDialog({ title: 'No notebook', body: 'Open a notebook first.', buttons: [Dialog.okButton()] });
    return;
  }
  const notebook = panel.content;
  NotebookActions.insertBelow(notebook);
  const cell = notebook.activeCell;
  if (cell) {
    cell.model.sharedModel.setSource(source);
  }
  if (run) {
    await NotebookActions.run(notebook, panel.sessionContext);
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'A live sidebar of nbfinetune runs.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette, ISettingRegistry],
  activate: (app: JupyterFrontEnd, tracker: INotebookTracker, palette: ICommandPalette | null,
    settings: ISettingRegistry | null) => {
    const panel = new RunsPanel(tracker);
    app.shell.add(panel, 'left', { rank: 900 });
    const command = 'nbfinetune:insert-template';
    app.commands.addCommand(command, {
      label: 'Insert a fine-tune cell (nbfinetune)',
      execute: () => insertAndRun(tracker, TEMPLATE, false)
    });
    palette?.addItem({ command, category: 'nbfinetune' });
    if (settings) {
      void settings.load(PLUGIN_ID).then(loaded => {
        const apply = () => {
          panel.intervalMs = 1000 * (loaded.get('refreshInterval').composite as number);
        };
        apply();
        loaded.changed.connect(apply);
      });
    }
  }
};

export default plugin;
