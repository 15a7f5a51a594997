// Copyright 2026 Cloudflare, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

use crate::*;
use bytes::Bytes;
use http::header;

#[derive(Debug, Clone)]
pub struct CaseHeaderName(Bytes);

impl CaseHeaderName {
    pub fn new(name: String) -> Self {
        CaseHeaderName(name.into())
    }
}

impl CaseHeaderName {
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    pub fn from_slice(buf: &[u8]) -> Self {
        CaseHeaderName(Bytes::copy_from_slice(buf))
    }
}

/// A trait that converts into case-sensitive header names.
pub trait IntoCaseHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName;

    /// The case-sensitive name together with the [HeaderName] it stands for.
    ///
    /// The default parses the case-sensitive name; types that already hold a [HeaderName]
    /// ([HeaderName] itself, [CasedHeaderName]) return it as it is, so inserting a header
    /// under them does not turn the name into bytes and parse it back.
    fn into_case_and_header_name(self) -> Result<(CaseHeaderName, HeaderName)>
    where
        Self: Sized,
    {
        let case_header_name = self.into_case_header_name();
        let header_name: HeaderName = case_header_name
            .as_slice()
            .try_into()
            .or_err(InvalidHTTPHeader, "invalid header name")?;
        Ok((case_header_name, header_name))
    }
}

impl IntoCaseHeaderName for CaseHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        self
    }
}

impl IntoCaseHeaderName for String {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self.into())
    }
}

impl IntoCaseHeaderName for &'static str {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self.into())
    }
}

impl IntoCaseHeaderName for HeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(titled_header_name(&self))
    }

    fn into_case_and_header_name(self) -> Result<(CaseHeaderName, HeaderName)> {
        Ok((CaseHeaderName(titled_header_name(&self)), self))
    }
}

impl IntoCaseHeaderName for &HeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(titled_header_name(self))
    }

    fn into_case_and_header_name(self) -> Result<(CaseHeaderName, HeaderName)> {
        Ok((CaseHeaderName(titled_header_name(self)), self.clone()))
    }
}

/// A header name prepared once together with the spelling it is written in on HTTP/1.
///
/// Inserting a header under a `&'static str` or [Bytes] parses (and, for a name that is not
/// one of `http`'s standard ones, lower-cases into a new allocation) the name on every insert;
/// under a [CasedHeaderName] the name is neither copied nor parsed, and the header goes out in
/// the same spelling as it would under the `&'static str`.
///
/// ```
/// use pingora_http::{CasedHeaderName, RequestHeader};
///
/// const X_REQUEST_ID: CasedHeaderName = CasedHeaderName::from_static("x-request-id", "X-Request-Id");
///
/// let mut req = RequestHeader::build("GET", b"/", None).unwrap();
/// req.insert_header(&X_REQUEST_ID, "1").unwrap();
/// let mut buf = vec![];
/// req.header_to_h1_wire(&mut buf);
/// assert_eq!(buf, b"X-Request-Id: 1\r\n");
/// assert_eq!(req.headers.get(X_REQUEST_ID.name()).unwrap(), "1");
/// ```
#[derive(Debug, Clone)]
pub struct CasedHeaderName {
    name: HeaderName,
    spelling: Bytes,
}

impl CasedHeaderName {
    /// `name` (lower case, as [HeaderName::from_static] takes it) written as `spelling`.
    ///
    /// Panics (at compile time in a `const`) when `name` is not a valid lower-case header name
    /// or `spelling` is not `name` in another ASCII case.
    pub const fn from_static(name: &'static str, spelling: &'static str) -> Self {
        let (a, b) = (name.as_bytes(), spelling.as_bytes());
        assert!(a.len() == b.len(), "spelling is not the same name");
        let mut i = 0;
        while i < a.len() {
            assert!(
                a[i] == b[i].to_ascii_lowercase(),
                "spelling is not the same name"
            );
            i += 1;
        }
        CasedHeaderName {
            name: HeaderName::from_static(name),
            spelling: Bytes::from_static(spelling.as_bytes()),
        }
    }

    /// The name parsed once from `spelling`.
    pub fn new(spelling: impl IntoCaseHeaderName) -> Result<Self> {
        let (case, name) = spelling.into_case_and_header_name()?;
        Ok(CasedHeaderName {
            name,
            spelling: case.0,
        })
    }

    /// The [HeaderName], for lookups and removals.
    pub fn name(&self) -> &HeaderName {
        &self.name
    }

    /// The spelling written on HTTP/1.
    pub fn spelling(&self) -> &[u8] {
        &self.spelling
    }
}

impl IntoCaseHeaderName for CasedHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self.spelling)
    }

    fn into_case_and_header_name(self) -> Result<(CaseHeaderName, HeaderName)> {
        Ok((CaseHeaderName(self.spelling), self.name))
    }
}

impl IntoCaseHeaderName for &CasedHeaderName {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self.spelling.clone())
    }

    fn into_case_and_header_name(self) -> Result<(CaseHeaderName, HeaderName)> {
        Ok((CaseHeaderName(self.spelling.clone()), self.name.clone()))
    }
}

impl IntoCaseHeaderName for Bytes {
    fn into_case_header_name(self) -> CaseHeaderName {
        CaseHeaderName(self)
    }
}

fn titled_header_name(header_name: &HeaderName) -> Bytes {
    titled_header_name_str(header_name).map_or_else(
        || Bytes::copy_from_slice(header_name.as_str().as_bytes()),
        |s| Bytes::from_static(s.as_bytes()),
    )
}

pub(crate) fn titled_header_name_str(header_name: &HeaderName) -> Option<&'static str> {
    Some(match *header_name {
        header::ACCEPT_RANGES => "Accept-Ranges",
        header::AGE => "Age",
        header::CACHE_CONTROL => "Cache-Control",
        header::CONNECTION => "Connection",
        header::CONTENT_TYPE => "Content-Type",
        header::CONTENT_ENCODING => "Content-Encoding",
        header::CONTENT_LENGTH => "Content-Length",
        header::DATE => "Date",
        header::TRANSFER_ENCODING => "Transfer-Encoding",
        header::HOST => "Host",
        header::SERVER => "Server",
        header::SET_COOKIE => "Set-Cookie",
        // TODO: add more const header here to map to their titled case
        // TODO: automatically upper case the first letter?
        _ => {
            return None;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_case_header_name() {
        assert_eq!("FoO".into_case_header_name().as_slice(), b"FoO");
        assert_eq!("FoO".to_string().into_case_header_name().as_slice(), b"FoO");
        assert_eq!(header::SERVER.into_case_header_name().as_slice(), b"Server");
    }
}
