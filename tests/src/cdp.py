# Loads pages in headless Chromium over the DevTools protocol and prints,
# as one JSON object, what each shows: its title, its tables (rows with
# their data-id, cells, and data-rule / data-group items) and the texts of
# its inline SVG; saves a screenshot of each page.
#
#   python3 cdp.py BASE ACCESS_KEY_ID SECRET OUTDIR NAME=PATH...
# (the console's sign-in: HTTP Basic with an API access key)
import base64, json, os, socket, subprocess, sys, tempfile, time, urllib.request

import websocket

base, key, secret, outdir, pages = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
auth = 'Basic ' + base64.b64encode(f'{key}:{secret}'.encode()).decode()

EXTRACT = r"""(() => {
  const out = {title: document.title, tables: {},
               svg: Array.from(document.querySelectorAll('svg text')).map(t => t.textContent)};
  for (const t of document.querySelectorAll('table[id]')) {
    out.tables[t.id] = Array.from(t.querySelectorAll('tr')).filter(r => r.querySelector('td')).map(r => {
      const own = r.dataset.id || (r.querySelector('td[data-id]') || {dataset: {}}).dataset.id || null;
      return {id: own,
              cells: Array.from(r.children).map(c => c.innerText.trim()),
              rules: Array.from(r.querySelectorAll('[data-rule]')).map(e => e.dataset.rule),
              groups: Array.from(r.querySelectorAll('[data-group]')).map(e => e.dataset.group)};
    });
  }
  return JSON.stringify(out);
})()"""

def free_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port

port = free_port()
profile = tempfile.mkdtemp(prefix='sg-chromium-')
browser = subprocess.Popen(
    ['/usr/bin/chromium', '--headless=new', '--no-sandbox', '--disable-gpu',
     '--no-first-run', '--disable-extensions', '--remote-allow-origins=*',
     f'--remote-debugging-port={port}', f'--user-data-dir={profile}',
     '--window-size=1280,900', 'about:blank'],
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    target = None
    for _ in range(200):
        try:
            targets = json.load(urllib.request.urlopen(f'http://127.0.0.1:{port}/json/list'))
            target = next(t for t in targets if t['type'] == 'page')
            break
        except Exception:
            time.sleep(0.1)
    if target is None:
        sys.exit('chromium did not open its DevTools endpoint')
    ws = websocket.create_connection(target['webSocketDebuggerUrl'], timeout=30, suppress_origin=True)
    ids = iter(range(1, 1 << 30))

    def call(method, **params):
        n = next(ids)
        ws.send(json.dumps({'id': n, 'method': method, 'params': params}))
        while True:
            m = json.loads(ws.recv())
            if m.get('id') == n:
                if 'error' in m:
                    raise RuntimeError(f'{method}: {m["error"]}')
                return m['result']

    def wait_for(event):
        while True:
            m = json.loads(ws.recv())
            if m.get('method') == event:
                return m

    call('Page.enable')
    call('Network.enable')
    call('Network.setExtraHTTPHeaders', headers={'Authorization': auth})
    shown = {}
    for spec in pages:
        name, path = spec.split('=', 1)
        call('Page.navigate', url=base + path)
        wait_for('Page.loadEventFired')
        got = call('Runtime.evaluate', expression=EXTRACT, returnByValue=True)
        shown[name] = json.loads(got['result']['value'])
        png = call('Page.captureScreenshot', format='png', captureBeyondViewport=True)
        with open(os.path.join(outdir, name + '.png'), 'wb') as f:
            f.write(base64.b64decode(png['data']))
    print(json.dumps(shown))
finally:
    browser.kill()
    browser.wait()
