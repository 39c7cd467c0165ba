//! A real headless Chromium, driven over WebDriver: Debian's `chromium` and `chromedriver`
//! (`scripts/test` installs them when missing), with `fantoccini` as the client. ChromeDriver is
//! started on port 0 and reports the port it took in its first lines, so no other process can
//! take it in between; the browser runs with a profile of its own in a temporary folder.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tempfile::TempDir;

/// How long ChromeDriver gets to report its port.
const DRIVER_START: Duration = Duration::from_secs(20);
/// How long a click's page gets to load.
const NAVIGATION: Duration = Duration::from_secs(20);

/// A ChromeDriver process and one headless Chromium session on it; both end when dropped.
pub struct Browser {
    /// The WebDriver session.
    pub client: Client,
    driver: Child,
    _profile: TempDir,
}

impl Browser {
    /// Starts ChromeDriver and a headless Chromium `width` × `height` pixels.
    pub async fn start(width: u32, height: u32) -> Browser {
        let mut driver = Command::new("chromedriver")
            .args(["--port=0", "--allowed-ips=127.0.0.1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("chromedriver does not start ({e}): scripts/test installs it"));
        let stdout = driver.stdout.take().expect("chromedriver's stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line
                    .split("started successfully on port ")
                    .nth(1)
                    .and_then(|rest| rest.trim_end_matches('.').parse::<u16>().ok())
                {
                    let _ = tx.send(port);
                }
            }
        });
        let port = rx
            .recv_timeout(DRIVER_START)
            .unwrap_or_else(|_| panic!("chromedriver reported no port within {DRIVER_START:?}"));
        let profile = tempfile::tempdir().expect("browser profile folder");
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--hide-scrollbars",
                    "--no-proxy-server",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!("an object")
        };
        let started = Instant::now();
        let client = loop {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => break client,
                Err(e) if started.elapsed() < DRIVER_START => {
                    eprintln!("webdriver session: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no webdriver session on port {port}: {e}"),
            }
        };
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    /// Opens `url` and waits until the page has loaded.
    pub async fn open(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The page's address now (after any redirect).
    pub async fn url(&self) -> String {
        self.client.current_url().await.expect("current url").to_string()
    }

    /// What `script` (a function body; `arguments` are `args`) returns on the page.
    pub async fn run(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Types `text` into the field `css` picks.
    pub async fn type_into(&self, css: &str, text: &str) {
        let field = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        field
            .send_keys(text)
            .await
            .unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Clicks the element `css` picks (a link or a form's button) and waits until the page it
    /// leads to has loaded: WebDriver's click returns once the click is dispatched, before a
    /// form's answer has arrived, so the old page is marked first and the new one is the page
    /// without the mark (a form may lead back to the same address).
    pub async fn click(&self, css: &str) {
        self.run("window.recgwOldPage = true; return null;", vec![]).await;
        let element = self
            .client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"));
        element.click().await.unwrap_or_else(|e| panic!("click {css}: {e}"));
        let started = Instant::now();
        loop {
            let loaded = self
                .client
                .execute(
                    "return window.recgwOldPage === undefined && document.readyState === 'complete';",
                    vec![],
                )
                .await;
            // A script may fail while the old page is being replaced: that is not loaded yet.
            if loaded.is_ok_and(|v| v == Value::Bool(true)) {
                return;
            }
            assert!(
                started.elapsed() < NAVIGATION,
                "clicking {css} led to no new page within {NAVIGATION:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A PNG of the whole page as the browser draws it.
    pub async fn screenshot(&self) -> Vec<u8> {
        self.client.screenshot().await.expect("screenshot")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The session ends with its driver; Chromium exits when ChromeDriver does.
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
