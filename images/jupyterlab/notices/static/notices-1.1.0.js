// Studios' notices in JupyterLab: what the platform tells the members working in a session.
//
// Plain JavaScript with no build step and nothing to install: JupyterLab loads this file as a federated extension's
// container (window._JUPYTERLAB[name] with get and init, as webpack's module federation makes them), and the plugin
// it holds uses only the application object (its shell, commands and contents service), so it shares no package with
// JupyterLab. The file's name carries the package's version: a browser never runs a copy it cached of another one.
//
// The plugin listens on the WebSocket that the session's gate serves itself (protocol.NOTICES_PATH), never the IDE:
// - "warning": an automatic stop is near. A notification says when and why, with a button to open the studio's page
//   on the platform, where members keep it running or extend it with their own rights.
// - "stop": the session stops. Every open document with unsaved changes is saved, the gate hears whether all were
//   ("saved": true or false, the only thing it reads), and the page is covered with who stopped the studio and why,
//   instead of JupyterLab's bare "Disconnected". The supervisor waits "seconds" at most for the saves, and tells the
//   pages one after the other: a file a colleague saved meanwhile is not written over, this page's version of it is
//   kept beside it.
//
// (The package's metadata also turns off JupyterLab's news prompt: sessions run on a closed network.)
(function () {
  'use strict';

  var NAME = 'studios-notices';
  var NOTICES_PATH = 'studios/notices';
  var OPEN_STUDIO_PAGE = 'studios:open-studio-page';
  var CHANGED_MARGIN_MS = 500; // JupyterLab's own margin before it calls a file changed on disk

  function noticesUrl() {
    var config = JSON.parse(document.getElementById('jupyter-config-data').textContent || '{}');
    return location.origin.replace(/^http/, 'ws') + (config.baseUrl || '/') + NOTICES_PATH;
  }

  function isWebLink(link) {
    return typeof link === 'string' && /^https?:\/\//.test(link);
  }

  // Whether the file changed on disk since this page opened or last saved it: a colleague saved it in the meantime.
  // (JupyterLab itself would ask whether to overwrite it, a question nobody is left to answer once the session stops.)
  function changedOnDisk(app, context) {
    return app.serviceManager.contents.get(context.path, { content: false }).then(function (disk) {
      var own = context.contentsModel && context.contentsModel.last_modified;
      return !own || new Date(disk.last_modified) - new Date(own) > CHANGED_MARGIN_MS;
    });
  }

  // This page's version of a file a colleague saved meanwhile, kept beside it rather than written over theirs.
  function keepBeside(app, context, stamp) {
    var path = context.path.replace(/(\.[^./]*)?$/, function (extension) {
      return '-not-saved-' + stamp + extension;
    });
    var notebook = context.contentsModel.type === 'notebook';
    return app.serviceManager.contents
      .save(path, {
        type: context.contentsModel.type,
        format: notebook ? 'json' : 'text',
        content: notebook ? context.model.toJSON() : context.model.toString()
      })
      .then(function () {
        return path;
      });
  }

  // Save each open document that has unsaved changes, each file once, one after the other. What became of them:
  // whether all were saved, and where this page's version of a file a colleague had saved meanwhile was kept.
  async function saveAll(app) {
    var outcome = { saved: true, kept: [] };
    var paths = new Set();
    var stamp = new Date().toISOString().slice(0, 19).replace(/:/g, '-');
    for (var widget of app.shell.widgets('main')) {
      var context = widget.context;
      if (!context || !context.model || !context.model.dirty || context.model.readOnly || paths.has(context.path)) {
        continue;
      }
      paths.add(context.path);
      try {
        if (await changedOnDisk(app, context)) {
          outcome.kept.push(await keepBeside(app, context, stamp));
        } else {
          await context.save();
        }
      } catch (error) {
        outcome.saved = false;
      }
    }
    return outcome;
  }

  function paragraph(text) {
    var element = document.createElement('p');
    element.textContent = text;
    return element;
  }

  // Cover the page with why the session stopped and what became of the documents: ``outcome`` as saveAll gives it,
  // or null when the saves did not finish in time.
  function cover(notice, outcome) {
    var page = document.createElement('div');
    page.id = 'studios-stopped';
    page.style.cssText =
      'position:fixed;inset:0;z-index:100000;display:flex;align-items:center;justify-content:center;' +
      'background:var(--jp-layout-color1,#fff);color:var(--jp-ui-font-color0,#111);' +
      'font-family:var(--jp-ui-font-family,sans-serif);font-size:16px;line-height:1.5';
    var box = document.createElement('div');
    box.setAttribute('role', 'alert');
    box.style.cssText = 'max-width:36em;padding:2em';
    var title = document.createElement('h1');
    title.textContent = 'This session has stopped';
    title.style.cssText = 'font-size:24px;margin:0 0 0.5em';
    box.append(title, paragraph(notice.message || 'The studio was stopped.'));
    box.append(
      paragraph(
        outcome === null
          ? 'Your open documents could not be saved in time: their unsaved changes are lost.'
          : outcome.saved
            ? 'Your open documents were saved: they are there when the studio starts again.'
            : 'Some open documents could not be saved: their unsaved changes are lost.'
      )
    );
    for (var path of outcome ? outcome.kept : []) {
      box.append(
        paragraph('A colleague saved a file you had changed. Your version was kept beside theirs, as ' + path + '.')
      );
    }
    if (isWebLink(notice.link)) {
      var link = document.createElement('a');
      link.href = notice.link;
      link.textContent = "Open the studio's page";
      link.style.color = 'var(--jp-content-link-color,#0b5cad)';
      var line = document.createElement('p');
      line.append(link);
      box.append(line);
    }
    page.append(box);
    document.body.append(page);
  }

  function stop(app, socket, notice) {
    var answered = saveAll(app).then(function (outcome) {
      if (socket.readyState === WebSocket.OPEN) {
        socket.send(JSON.stringify({ saved: outcome.saved }));
      }
      return outcome;
    });
    var late = new Promise(function (resolve) {
      setTimeout(resolve, (Number(notice.seconds) || 0) * 1000, null);
    });
    Promise.race([answered, late]).then(function (outcome) {
      cover(notice, outcome);
    });
  }

  function warn(app, notice) {
    var options = { autoClose: false };
    if (isWebLink(notice.link)) {
      options.actions = [{ label: "Open the studio's page", commandId: OPEN_STUDIO_PAGE, args: { url: notice.link } }];
    }
    app.commands.execute('apputils:notify', { message: String(notice.message), type: 'warning', options: options });
  }

  // One WebSocket per page, opened again (less and less often) when it closes before the session stopped.
  function listen(app) {
    var stopping = false;
    var delay = 1000;
    function connect() {
      var socket = new WebSocket(noticesUrl());
      socket.onopen = function () {
        delay = 1000;
      };
      socket.onmessage = function (event) {
        var notice;
        try {
          notice = JSON.parse(event.data);
        } catch (error) {
          return;
        }
        if (notice.kind === 'stop' && !stopping) {
          stopping = true;
          stop(app, socket, notice);
        } else if (notice.kind === 'warning') {
          warn(app, notice);
        }
      };
      socket.onclose = function () {
        if (!stopping) {
          setTimeout(connect, delay);
          delay = Math.min(delay * 2, 60000);
        }
      };
    }
    connect();
  }

  var plugin = {
    id: NAME + ':plugin',
    description: "The platform's notices: save every open document as the session stops, and say why it stopped.",
    autoStart: true,
    activate: function (app) {
      app.commands.addCommand(OPEN_STUDIO_PAGE, {
        label: "Open the studio's page",
        execute: function (args) {
          if (isWebLink(args.url)) {
            window.open(args.url, '_blank', 'noopener');
          }
        }
      });
      app.restored.then(function () {
        listen(app);
      });
    }
  };

  window._JUPYTERLAB = window._JUPYTERLAB || {};
  window._JUPYTERLAB[NAME] = {
    init: function () {},
    get: function (module) {
      if (module !== './extension') {
        return Promise.reject(new Error('Module "' + module + '" does not exist in container.'));
      }
      return Promise.resolve(function () {
        return { __esModule: true, default: [plugin] };
      });
    }
  };
})();
