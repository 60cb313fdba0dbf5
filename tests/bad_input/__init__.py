"""Bad input, collected in one place: every way a caller, the provider or a third party can send
something wrong, the clear answer it gets, and the proof that nothing changed or was lost.

"Nothing changed" means every row of every table is identical before and after (a snapshot of
the whole database), and an Idempotency-Key sent with a refused request is still free. Every
database test runs on SQLite and PostgreSQL. Run: `.venv/bin/pytest tests/bad_input`.

Index (case -> expected answer -> where it is tested; "here" is this package):

| who | what is wrong | answer | where |
| --- | --- | --- | --- |
| caller | no/wrong scheme/empty/blank/unknown/suffixed/truncated/64 KiB/non-UTF-8 key, key in another header: each on every route | 401 `unauthorized`, `WWW-Authenticate: Bearer` | here: test_callers AUTH (the route table is checked against the OpenAPI document) |
| caller | another caller's task, on every task route; in lists | 404 `not_found` (never 403); not listed | here; tests/tasks/test_api.py |
| caller | Idempotency-Key empty, 256 chars, 8 KiB, Latin-1, UTF-8, tab, DEL | 422 `validation_error` naming Idempotency-Key | here: HEADERS; tests/tasks/test_create_validation.py |
| caller | Content-Type text/plain, form, multipart, XML, none | 422 `validation_error` | here: HEADERS |
| caller | Content-Length over 1 MiB or 10 GB (declared), body over 1 MiB (streamed) | 413 `payload_too_large`, body not read | here: HEADERS, BODIES; tests/tasks/test_create_validation.py |
| caller | Content-Length shorter or longer than the body (real HTTP, h11) | 422, or the connection closes; no task | here: test_a_lying_content_length_makes_no_task |
| caller | body empty, not JSON, not UTF-8, array/null/number/string/true, nested 100000 deep, 5000-digit integer | 422 `validation_error` (`body: ...`, with the position) | here: BODIES |
| caller | unknown field, smuggled callback_url | 422 naming the field | here: BODIES |
| caller | each field: missing/empty/blank/null/wrong type/too long/NUL/lone surrogate/wrong enum/out of range (prompt, model, size, quality, n) | 422 naming the field | here: BODIES; tests/tasks/test_create_validation.py |
| caller | image_urls: 17, not a list, items not strings, ftp/file/data/javascript, relative, no host, 2049 chars, newline, lone surrogate, bad port, bad IPv6 | 422 naming image_urls | here: BODIES |
| caller | reference_images: 17, 17 with image_urls, an upload of another caller, expired, deleted; a task of another caller, unknown, failed, cancelled, queued; index 1 of a one-image task; several bad at once | 422 `validation_error` `reference_images[i]: no such upload (...)` / `no such task` / `task ... has not succeeded (status ...)` / `task ... has no image at index 1; it has 1`; nothing saved, no object, no job | here: test_references CASES |
| caller | reference_images: malformed/long/numeric upload id, malformed/upper-case task id, index negative/string/true/2**31, task without index, index without task, two/three/no sources, unknown key, `source` key, a string or null for the object, not a list, url ftp/relative/newline/2049 chars; image_urls[i] | 422 naming `reference_images[i]` (and the field); `image_urls[i]` | here: test_references CASES |
| caller | references refused on a live stack (workers and simulator running) | nothing reaches the provider | here: test_refused_references_never_reach_the_provider |
| caller | metadata: not an object, over 4 KiB, NaN/Infinity/1e400, lone surrogate | 422 naming metadata | here: BODIES |
| caller | notify_url: not a URL, javascript, number, too long, NUL, lone surrogate, bad port | 422 naming notify_url | here: BODIES |
| caller | notify_url http, loopback, IPv6, IPv4-mapped, link-local, localhost, decimal IP (private networks forbidden); no notify secret | 422 `notify_url: ...` | here: PUBLIC_ONLY; tests/notify/test_ssrf.py (also a name resolving to loopback, refused at connect time) |
| caller | the same key with another body | 422 `idempotency_key_reused` | here; tests/tasks/test_api.py |
| caller | task id not a UUID, unknown, upper case, suffixed, 2000 chars, NUL, traversal; events/retry/image of such ids | 404 `not_found` | here: PATHS |
| caller | image index -1, 16, huge, not a number, 1.5 | 422 `validation_error` | here: PATHS |
| caller | retry of a task with nothing to retry; wrong method; unknown route | 409 `not_retryable`; 405; 404 | here: PATHS; tests/tasks/test_redrive.py |
| caller | limit 0/101/-1/huge/x/1e3/empty, status unknown/upper case/empty, cursor garbage/too long/NUL/not JSON/not a pair/not a date/naive/bad id | 422 naming the parameter | here: QUERIES; tests/tasks/test_api.py |
| caller | a well-formed cursor pointing at another caller's task | 200, the caller's own tasks only | here |
| caller | upload whose bytes are no JPEG/PNG/WebP whatever it declares (text named .png, GIF, HTML, ZIP, SVG); a Content-Type other than image/png, image/jpeg, image/webp, application/octet-stream, multipart/form-data | 415 `unsupported_media_type`; nothing stored | test_uploads POSTS |
| caller | upload: PNG signature then garbage, IHDR then garbage, signature alone, cut in half, zero width, 20000x20000 bomb (a real PNG), JPEG without its end, WebP shorter than its RIFF length | 422 `invalid_image`; nothing stored | test_uploads POSTS; tests/uploads/test_structure.py (every truncation, any changed PNG byte) |
| caller | polyglots: PNG then ZIP, PNG header glued to a JPEG, JPEG then HTML, WebP then ZIP | 422 `invalid_image` (bytes after the image); HTML inside a JPEG comment is a valid JPEG: stored, served `nosniff` as an attachment | test_uploads POSTS; tests/uploads/test_uploads_api.py |
| caller | upload of 0 bytes (raw or an empty part) | 422 `empty_body` | test_uploads POSTS |
| caller | multipart without parts, with another part, two `file` parts, a part before or after `file`, a part without a name, no closing boundary, not multipart, no or a 71-char boundary | 422 `validation_error` | test_uploads POSTS |
| caller | upload over 50 MiB: declared (raw, multipart) or chunked (in process, and over real HTTP with uvicorn) | 413 `payload_too_large`, cut off at the cap, nothing stored | test_uploads |
| caller | upload body that stalls (nothing for 30 s) | 408 `request_timeout`, nothing stored | test_uploads |
| caller | upload Idempotency-Key bad; the seeded key with other bytes | 422 `validation_error`; 422 `idempotency_key_reused` | test_uploads |
| caller | upload id of another caller, expired, deleted, unknown, malformed, upper case, too long, NUL, traversal (GET, /content, DELETE); DELETE of one a queued task uses; wrong methods | 404 `not_found`; 409 `upload_in_use`; 405 | test_uploads |
| caller | a create over its limits: creates_per_minute (also 0), max_active_tasks, daily_credits, monthly_credits (references counted) | 429 `rate_limited` + `Retry-After`; 429 `too_many_active_tasks`; 402 `budget_exhausted` naming the budget and its reset; nothing saved, key free, a replay still 200 | tests/tasks/test_limits.py (both databases; nothing reaches the provider with the workers running); tests/e2e/test_limits_replicas.py (two processes) |
| caller | GET /v1/usage: from/to not YYYY-MM-DD (one-digit month, no dashes, a time, a word, a full-width digit), no such date, from after to, over 366 days, over 64 chars | 422 `validation_error` naming `from` or `to`; nothing changed | here: test_usage |
| operator | limits file: unknown table or key, wrong type (bool, float, string, array for a whole number; bool, string, array for credits), negative, NaN, inf, a caller not in IMAGEGEN_API_KEYS, not a table, TOML syntax error, missing, a directory, not UTF-8 | the process stops with `configuration error: IMAGEGEN_LIMITS_FILE: <file>: <entry>: <why>`, exit 2 | here: test_limits_file (also through the `imagegen-gateway serve` console script) |
| caller | anything generated from the OpenAPI document | no 5xx, every answer documented | tests/test_fuzz_api.py |
| provider | callback without token, empty/random/other-secret/other-task/suffixed/truncated token, extra segment, unknown or malformed task id, GET | 401 or 404; nothing recorded | here: FORGED; tests/callbacks/test_endpoint.py |
| provider | valid token, body about another upstream task (ours or not, upper case) | 400, recorded as `mismatch`, task unchanged | here; tests/callbacks/test_endpoint.py |
| provider | callback not JSON, empty, array, null, binary, nested, id missing/number/empty/129 chars/NUL | 400, recorded as `malformed`, task unchanged | here: MALFORMED; tests/callbacks/test_endpoint.py |
| provider | status missing/unknown/number/object/NUL/lone surrogate; progress 150/-5/word/NaN/1e400; results or error of the wrong type | 200, progress clamped, unknown statuses ignored, a final one only brings the confirming poll forward | here: MALFORMED |
| provider | callback of any Content-Type | read as JSON | here |
| provider | callback over 1 MiB (declared or streamed) | 413, nothing recorded | here; tests/callbacks/test_endpoint.py |
| provider | progress backwards, pending after processing, anything after a final claim, duplicates | 200, the task never moves back | here: SEQUENCES; tests/callbacks/test_endpoint.py (terminal tasks, concurrent duplicates); tests/tasks/test_states.py (property tests) |
| provider | callbacks during a database outage | 503, then the retry succeeds | tests/callbacks/test_database_outage.py |
| provider | create answered 200 unreadable/array/no id/id no upstream id/NUL id; 504 | task stays queued `uncertain`, nothing adopted, never resent | here: CREATES; tests/provider/test_evolink_errors.py |
| provider | create answered 400 HTML/NUL message/odd error; 500; 429 with a bad Retry-After; 302 | `failed` `submission_rejected` with the provider's message, or retried | here: CREATES; tests/provider/test_evolink_errors.py |
| provider | query answered unreadable/array/about another task/unknown status/odd progress/error code an integer or with NUL/no error/completed without results; 404; 500 | retried with the task unchanged, or the task ends as the answer says | here: QUERIES; tests/provider/test_parsing.py |
| third party | result URL: loopback, IPv6, IPv4-mapped, link-local, 10/8, localhost, decimal IP, name resolving to loopback, redirects to internal addresses, http, file, ftp, credentials, HTML, ZIP, over the size cap (streamed or declared), gzip | task `failed` `archive_failed` `image 0: <why>`, internal target never contacted, the worker archives the next task | here: test_third_parties HOSTILE (whole path, workers running) |
| third party | a hostile URL only a callback names | never fetched; the query's URL is archived | here: test_third_parties |
| third party | every address form, DNS rebinding, redirect chains, schemes, sizes, slow bodies, magic bytes (the fetcher alone) | refused before connecting | tests/archive/test_fetch_ssrf.py, test_fetch_sniff.py, test_fetch.py, test_archiver.py |
| third party | a notify_url whose name resolves to loopback | given up at once, receiver never called | tests/notify/test_ssrf.py |

Bugs this suite found (fixed, each with its regression test): a lone surrogate in an image URL
was saved and made every answer showing the task a 500; NaN/Infinity in metadata were a 500 on
PostgreSQL and silently null on SQLite; a callback status with NUL or a lone surrogate was a
503/500; create bodies of any size were read whole; JSON the parser gave up on was an
undocumented 400; n=true and non-ASCII Idempotency-Keys were accepted; a create answered with an
id that is no upstream id was recorded as accepted and left the task waiting for hours."""

# ruff: noqa: E501 - the index is a Markdown table, one case group a line
