//! A dashboard client for tests: a cookie jar kept by hand (so the tests see every
//! `Set-Cookie` and its flags, and send `Secure` cookies over http://127.0.0.1 as a
//! browser does), no redirects followed, forms posted with the CSRF token.

use std::collections::BTreeMap;

pub const PASSWORD: &str = "correct horse battery staple";

/// One answer: status, `Location`, `Set-Cookie` lines and body.
#[derive(Debug)]
pub struct Page {
    pub status: u16,
    pub location: Option<String>,
    pub set_cookies: Vec<String>,
    pub body: String,
}

#[derive(Clone)]
pub struct WebClient {
    pub base: String,
    client: reqwest::Client,
    pub cookies: BTreeMap<String, String>,
}

impl WebClient {
    pub fn new(base: &str) -> WebClient {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("http client");
        WebClient { base: base.to_owned(), client, cookies: BTreeMap::new() }
    }

    /// The same cookies, sent to another gateway.
    pub fn at(&self, base: &str) -> WebClient {
        WebClient { base: base.to_owned(), ..self.clone() }
    }

    fn cookie_header(&self) -> String {
        let pairs: Vec<String> = self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
        pairs.join("; ")
    }

    async fn send(&mut self, request: reqwest::RequestBuilder) -> Page {
        let request = if self.cookies.is_empty() {
            request
        } else {
            request.header("cookie", self.cookie_header())
        };
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let location = headers.get("location").map(|v| v.to_str().unwrap().to_owned());
        let set_cookies: Vec<String> =
            headers.get_all("set-cookie").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
        for line in &set_cookies {
            let (pair, attributes) = line.split_once(';').unwrap_or((line, ""));
            let (name, value) = pair.split_once('=').expect("name=value");
            if attributes.contains("Max-Age=0") {
                self.cookies.remove(name);
            } else {
                self.cookies.insert(name.to_owned(), value.to_owned());
            }
        }
        let body = response.text().await.unwrap_or_default();
        Page { status, location, set_cookies, body }
    }

    pub async fn get(&mut self, path: &str) -> Page {
        let request = self.client.get(format!("{}{path}", self.base));
        self.send(request).await
    }

    /// A GET with `Authorization: Bearer` (to show that a key opens no page).
    pub async fn get_with_bearer(&mut self, path: &str, key: &str) -> Page {
        let request = self.client.get(format!("{}{path}", self.base)).bearer_auth(key);
        self.send(request).await
    }

    /// Posts a form as it is, without adding the CSRF token.
    pub async fn post_raw(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let mut serializer = form_urlencoded::Serializer::new(String::new());
        serializer.extend_pairs(fields);
        let request = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serializer.finish());
        self.send(request).await
    }

    /// Posts a form with the `sr_csrf` cookie's token, as the pages' forms do.
    pub async fn post(&mut self, path: &str, fields: &[(&str, &str)]) -> Page {
        let csrf = self.cookies.get("sr_csrf").cloned().unwrap_or_default();
        let mut all = vec![("csrf", csrf.as_str())];
        all.extend_from_slice(fields);
        self.post_raw(path, &all).await
    }

    pub async fn signup(&mut self, email: &str) -> Page {
        assert_eq!(self.get("/signup").await.status, 200);
        let page = self.post("/signup", &[("email", email), ("password", PASSWORD)]).await;
        assert_eq!((page.status, page.location.as_deref()), (303, Some("/dashboard")), "{page:?}");
        page
    }

    pub async fn login(&mut self, email: &str, password: &str) -> Page {
        assert_eq!(self.get("/login").await.status, 200);
        self.post("/login", &[("email", email), ("password", password)]).await
    }

    /// Creates a key on the keys page (a POST redirected to the page that shows it):
    /// its text, shown once.
    pub async fn create_key(&mut self, name: &str) -> String {
        let page = self.post("/dashboard/keys", &[("name", name)]).await;
        assert_eq!(page.location.as_deref(), Some("/dashboard/keys"), "{}", page.body);
        let page = self.get("/dashboard/keys").await;
        assert_eq!(page.status, 200, "{}", page.body);
        let start = page.body.find("<code id=\"new-key\">").expect("the new key is shown")
            + "<code id=\"new-key\">".len();
        let end = start + page.body[start..].find("</code>").unwrap();
        page.body[start..end].to_owned()
    }

    /// The dev-mode operator credit of the credits page.
    pub async fn credit(&mut self, usd: &str) {
        let page = self.get("/dashboard/credits").await;
        let marker = "name=\"idempotency_key\" value=\"";
        let start = page.body.find(marker).expect("the dev credit form") + marker.len();
        let idempotency_key = page.body[start..start + 64].to_owned();
        let page = self
            .post("/dashboard/credits", &[("amount", usd), ("idempotency_key", &idempotency_key)])
            .await;
        assert_eq!(page.status, 303, "{}", page.body);
    }

    pub async fn overview(&mut self) -> serde_json::Value {
        let page = self.get("/dashboard/overview.json").await;
        assert_eq!(page.status, 200, "{}", page.body);
        serde_json::from_str(&page.body).expect("json")
    }
}
