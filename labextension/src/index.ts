// The plugin: the "Fine-tunes" sidebar (./panel) over the server extension's REST API, a palette command
// that inserts a fine-tune cell, and the refresh interval from the settings.
import {
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { URLExt } from '@jupyterlab/coreutils';
import { INotebookTracker } from '@jupyterlab/notebook';
import { ServerConnection } from '@jupyterlab/services';
import { ISettingRegistry } from '@jupyterlab/settingregistry';

import { Fetch } from './model';
// eslint-disable-next-line jupyter/prefer-lazy-imports -- the sidebar is created at activation
import { insertAndRun, RunsPanel } from './panel';

const PLUGIN_ID = 'nbfinetune:plugin';
const TEMPLATE =
  '%load_ext nbfinetune\nrun = %finetune --data sample:people --steps 40';

/** Requests under /nbfinetune/api/ with Jupyter's authentication (token, XSRF). */
const serverFetch: Fetch = (path, init = {}) => {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(settings.baseUrl, 'nbfinetune', 'api', path);
  return ServerConnection.makeRequest(url, init, settings);
};

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'A live sidebar of nbfinetune runs.',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette, ISettingRegistry],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    palette: ICommandPalette | null,
    settings: ISettingRegistry | null
  ) => {
    const panel = new RunsPanel(tracker, serverFetch);
    app.shell.add(panel, 'left', { rank: 900 });
    const command = 'nbfinetune:insert-template';
    app.commands.addCommand(command, {
      label: 'Insert a fine-tune cell (nbfinetune)',
      describedBy: { args: { type: 'object', properties: {} } },
      execute: () => insertAndRun(tracker, TEMPLATE, false)
    });
    palette?.addItem({ command, category: 'nbfinetune' });
    if (settings) {
      settings
        .load(PLUGIN_ID)
        .then(loaded => {
          const apply = () => {
            const seconds = loaded.get('refreshInterval').composite as number;
            panel.intervalMs = 1000 * seconds;
          };
          apply();
          loaded.changed.connect(apply);
        })
        .catch(reason => {
          // The sidebar still works, at the default interval.
          console.error(
            `nbfinetune: cannot load the settings of ${PLUGIN_ID}`,
            reason
          );
        });
    }
  }
};

export default plugin;
