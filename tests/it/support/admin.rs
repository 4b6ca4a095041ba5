//! The admin server of a running daemon, as a script or support tool talks to it.

use serde_json::Value;

use super::Daemon;

/// The admin server of a running daemon, as a script or support tool talks to it.
pub struct AdminClient {
    pub base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl AdminClient {
    pub async fn of(daemon: &Daemon, token: Option<&str>) -> AdminClient {
        AdminClient {
            base: daemon.admin_url().await,
            token: token.map(str::to_string),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("http client"),
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends and returns the status and the body parsed as JSON (Null if it is not JSON).
    pub async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.expect("admin server answers");
        let status = response.status().as_u16();
        let body = response.bytes().await.expect("admin answer body");
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.send(
            self.request(reqwest::Method::POST, path)
                .header("content-type", "application/json")
                .header("x-actor", "alice")
                .body(body.to_string()),
        )
        .await
    }

    /// [`AdminClient::post`] with an `Idempotency-Key`.
    pub async fn post_keyed(&self, path: &str, body: &Value, key: &str) -> (u16, Value) {
        self.send(
            self.request(reqwest::Method::POST, path)
                .header("content-type", "application/json")
                .header("x-actor", "alice")
                .header("idempotency-key", key)
                .body(body.to_string()),
        )
        .await
    }

    /// A page as someone signed in with `session` (a cookie value) sees it: the status
    /// and the HTML.
    pub async fn page_as(&self, session: &str, path: &str) -> (u16, String) {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", format!("dispatcher_session={session}"))
            .send()
            .await
            .expect("admin server answers");
        let status = response.status().as_u16();
        (status, response.text().await.expect("page"))
    }

    /// A page's form posted as someone signed in with `session`: the status and the HTML.
    pub async fn post_form_as(
        &self,
        session: &str,
        path: &str,
        fields: &[(&str, &str)],
    ) -> (u16, String) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .header("cookie", format!("dispatcher_session={session}"))
            .header("origin", &self.base)
            .form(fields)
            .send()
            .await
            .expect("admin server answers");
        let status = response.status().as_u16();
        (status, response.text().await.expect("page"))
    }

    /// The raw answer, for pages and redirects.
    pub async fn raw(&self, request: reqwest::RequestBuilder) -> reqwest::Response {
        request.send().await.expect("admin server answers")
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}
