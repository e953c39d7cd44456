// The "Fine-tunes" sidebar widget: draws the rows of ./model and polls the run list while it is visible.
// Clicking a run inserts and executes a cell that attaches its dashboard in the current notebook.
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookActions } from '@jupyterlab/notebook';
import { LabIcon } from '@jupyterlab/ui-components';
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import {
  cancelRun,
  deleteRun,
  Fetch,
  fetchRuns,
  IRunRow,
  IRunSummary,
  pollFrequency,
  SPARK_HEIGHT,
  SPARK_WIDTH,
  toRow
} from './model';

const SVG = 'http://www.w3.org/2000/svg';

// jp-icon3 is JupyterLab's convention: the theme recolours the path, the fill is only a fallback.
const icon = new LabIcon({
  name: 'nbfinetune:runs',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24"><path class="jp-icon3" fill="#616161" ' +
    'd="M3 17l5-6 4 4 6-8 3 3v8H3z"/></svg>'
});

export class RunsPanel extends Widget {
  private list: HTMLDivElement;
  private poll: Poll;
  private _intervalMs = 2000;
  private active = false;

  constructor(
    private tracker: INotebookTracker,
    private fetch: Fetch
  ) {
    super();
    this.id = 'nbfinetune-runs';
    this.title.icon = icon;
    this.title.caption = 'Fine-tunes';
    this.addClass('nbft-panel');
    const heading = document.createElement('h2');
    heading.textContent = 'Fine-tunes';
    this.list = document.createElement('div');
    this.node.append(heading, this.list);
    // A rejected refresh makes the poll back off; a collapsed sidebar or a hidden tab stands it by.
    this.poll = new Poll({
      auto: false,
      factory: () => this.refresh(),
      frequency: pollFrequency(this._intervalMs, false),
      standby: () => !this.isVisible || 'when-hidden',
      name: 'nbfinetune:runs'
    });
  }

  /** The refresh interval in ms while a run is active (the `refreshInterval` setting). */
  get intervalMs(): number {
    return this._intervalMs;
  }

  set intervalMs(value: number) {
    this._intervalMs = value;
    this.poll.frequency = pollFrequency(value, this.active);
  }

  protected onAfterAttach(): void {
    void this.poll.start();
  }

  protected onAfterShow(): void {
    void this.poll.refresh(); // at once, not at the end of a standby interval
  }

  dispose(): void {
    this.poll.dispose();
    super.dispose();
  }

  private async refresh(): Promise<void> {
    let runs: IRunSummary[];
    try {
      runs = await fetchRuns(this.fetch);
    } catch (error) {
      this.list.replaceChildren(
        message('nbft-error', `Cannot list runs: ${error}`)
      );
      throw error;
    }
    const rows = runs.map(toRow);
    this.active = rows.some(row => row.active);
    this.poll.frequency = pollFrequency(this._intervalMs, this.active);
    this.render(rows);
  }

  private render(rows: IRunRow[]): void {
    if (!rows.length) {
      this.list.replaceChildren(
        message(
          'nbft-empty',
          'No runs yet. Start one with %finetune in a notebook.'
        )
      );
      return;
    }
    this.list.replaceChildren(...rows.map(row => this.item(row)));
  }

  private item(row: IRunRow): HTMLElement {
    const node = document.createElement('div');
    node.className = 'nbft-run';
    node.dataset.runId = row.runId;
    node.dataset.status = row.status;
    node.title = `Click to attach run ${row.runId} in the current notebook`;
    const head = document.createElement('div');
    head.className = 'nbft-run-head';
    const badge = element('span', 'nbft-badge', row.status);
    badge.dataset.status = row.status;
    head.append(element('span', 'nbft-run-id', row.label), badge);
    const bar = element('div', 'nbft-progress');
    const fill = document.createElement('div');
    fill.style.width = `${row.percent}%`;
    bar.appendChild(fill);
    const meta = element('div', 'nbft-meta');
    meta.append(
      element('span', '', row.steps),
      element('span', 'nbft-loss', row.loss)
    );
    node.append(head, bar, meta, sparkline(row.spark));
    node.appendChild(
      row.active ? this.cancelButton(row) : this.deleteButton(row)
    );
    node.onclick = () => void this.attach(row.runId);
    return node;
  }

  private cancelButton(row: IRunRow): HTMLButtonElement {
    const button = element(
      'button',
      'jp-Button jp-mod-styled jp-mod-warn nbft-cancel',
      'Cancel'
    );
    button.onclick = event => {
      event.stopPropagation();
      void this.cancel(row.runId);
    };
    return button;
  }

  private deleteButton(row: IRunRow): HTMLButtonElement {
    const button = element(
      'button',
      'jp-Button jp-mod-styled nbft-delete',
      'Delete'
    );
    button.title = 'Delete this run and its files';
    button.onclick = event => {
      event.stopPropagation();
      void this.delete(row);
    };
    return button;
  }

  async attach(runId: string): Promise<void> {
    await insertAndRun(
      this.tracker,
      `import nbfinetune as nbft\nrun = nbft.attach(${JSON.stringify(runId)})`,
      true
    );
  }

  async cancel(runId: string): Promise<void> {
    const result = await showDialog({
      title: 'Cancel fine-tune?',
      body: `Run ${runId} stops after its current step; its adapter and a checkpoint are kept.`,
      buttons: [
        Dialog.cancelButton({ label: 'Keep running' }),
        Dialog.warnButton({ label: 'Cancel run' })
      ]
    });
    if (!result.button.accept) {
      return;
    }
    try {
      await cancelRun(this.fetch, runId);
    } catch (error) {
      await showDialog({
        title: 'Not cancelled',
        body: String(error),
        buttons: [Dialog.okButton()]
      });
    }
    void this.poll.refresh();
  }

  async delete(row: IRunRow): Promise<void> {
    const label =
      row.label === row.runId ? row.runId : `${row.label} (${row.runId})`;
    const result = await showDialog({
      title: 'Delete fine-tune?',
      body: `Run ${label} and everything in its directory (events, adapter, checkpoints) are deleted for good.`,
      buttons: [
        Dialog.cancelButton({ label: 'Keep it' }),
        Dialog.warnButton({ label: 'Delete run' })
      ]
    });
    if (!result.button.accept) {
      return;
    }
    try {
      await deleteRun(this.fetch, row.runId);
    } catch (error) {
      // e.g. 409: the run started again (resume) since the list was drawn
      await showDialog({
        title: 'Not deleted',
        body: String(error),
        buttons: [Dialog.okButton()]
      });
    }
    void this.poll.refresh();
  }
}

export async function insertAndRun(
  tracker: INotebookTracker,
  source: string,
  run: boolean
): Promise<void> {
  const panel = tracker.currentWidget;
  if (!panel) {
    await showDialog({
      title: 'No notebook',
      body: 'Open a notebook first.',
      buttons: [Dialog.okButton()]
    });
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

function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className: string,
  text = ''
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  node.textContent = text;
  return node;
}

function message(className: string, text: string): HTMLParagraphElement {
  return element('p', className, text);
}

function sparkline(points: string | null): SVGSVGElement {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('width', String(SPARK_WIDTH));
  svg.setAttribute('height', String(SPARK_HEIGHT));
  svg.classList.add('nbft-spark');
  if (points) {
    const line = document.createElementNS(SVG, 'polyline');
    line.setAttribute('points', points);
    svg.appendChild(line); // stroke and fill: style/index.css
  }
  return svg;
}
