/*
 * http.c — the HTTP side of `loupe serve` on libmicrohttpd.
 *
 * One thread per connection (libmicrohttpd's mode): the thread collects
 * the body, validates it, queues a job and then waits for it — a plain
 * JSON answer once the job is done, or a server-sent event stream
 * forwarded as the job produces it. While waiting it polls the socket:
 * a client that hangs up cancels its job.
 *
 * Routes: GET /health, GET /v1/models[/ID], POST /v1/completions,
 * POST /v1/chat/completions, POST /v1/loupe/{attention,lens,attribute}.
 * Errors use OpenAI's envelope.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "server.h"

struct srv_http {
    struct MHD_Daemon *d;
    srv_engine *e;
    const srv_model *sm;
    srv_config cfg;
    long started;
    atomic_int active;   /* requests between first byte and completion */
    atomic_int draining; /* shutting down: new requests get 503 */
    int port;
};

/* Per request (libmicrohttpd's con_cls). */
typedef struct {
    srv_http *h;
    char *body; /* (n_body) */
    size_t n_body, cap_body;
    int too_large;
    srv_job *job;
    double t0;
    int status;
    char method[16], url[160];
} srv_conn;

/* A streamed response's reader state. */
typedef struct {
    srv_job *job;
    int fd;
    size_t sent;
} srv_stream;

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* Has the peer closed its side? (A pipelined next request is not a hang-up.) */
static int client_gone(int fd) {
    if (fd < 0) return 0;
    struct pollfd p = {fd, POLLRDHUP, 0};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

static int conn_fd(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    return ci ? (int)ci->connect_fd : -1;
}

/* ------------------------------------------------------------- responses */

/* Sends body (taken, malloc'd) as JSON. */
static enum MHD_Result send_json(struct MHD_Connection *c, srv_conn *rc, int status, char *body) {
    if (!body) {
        status = 500;
        body = strdup("{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":null}}");
        if (!body) return MHD_NO;
    }
    struct MHD_Response *r = MHD_create_response_from_buffer(strlen(body), body, MHD_RESPMEM_MUST_FREE);
    if (!r) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    if (status == 503) MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, "1");
    if (status == 401) MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    rc->status = status;
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result send_error(struct MHD_Connection *c, srv_conn *rc, const srv_error *e) {
    return send_json(c, rc, e->status, srv_error_json(e));
}

static enum MHD_Result send_simple_error(struct MHD_Connection *c, srv_conn *rc, int status, const char *type,
                                         const char *code, const char *msg) {
    srv_error e;
    srv_error_set(&e, status, type, code, NULL, "%s", msg);
    return send_error(c, rc, &e);
}

/* ------------------------------------------------------------ generation */

static enum MHD_Result wait_and_send(struct MHD_Connection *c, srv_conn *rc, int fd) {
    srv_job *j = rc->job;
    while (!srv_job_wait(j, SIZE_MAX, 100)) {
        if (client_gone(fd)) {
            atomic_store(&j->cancel, 1);
            rc->status = 499;
            return MHD_NO; /* closes the connection */
        }
    }
    /* done: the worker writes no more, so the body can be taken */
    pthread_mutex_lock(&j->mu);
    char *body = j->out ? j->out : strdup("");
    j->out = NULL;
    j->n_out = j->cap_out = 0;
    pthread_mutex_unlock(&j->mu);
    return send_json(c, rc, j->status, body);
}

static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    srv_stream *s = cls;
    srv_job *j = s->job;
    for (;;) {
        pthread_mutex_lock(&j->mu);
        size_t avail = j->n_out - s->sent;
        int done = j->done;
        if (avail) {
            size_t n = avail < max ? avail : max;
            memcpy(buf, j->out + s->sent, n);
            s->sent += n;
            pthread_mutex_unlock(&j->mu);
            return (ssize_t)n;
        }
        pthread_mutex_unlock(&j->mu);
        if (done) return MHD_CONTENT_READER_END_OF_STREAM;
        srv_job_wait(j, s->sent, 100);
        if (client_gone(s->fd)) {
            atomic_store(&j->cancel, 1);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
    }
}

static void stream_free(void *cls) {
    srv_stream *s = cls;
    atomic_store(&s->job->cancel, 1); /* no-op if it finished */
    srv_job_release(s->job);
    free(s);
}

static enum MHD_Result send_stream(struct MHD_Connection *c, srv_conn *rc, int fd) {
    srv_stream *s = calloc(1, sizeof *s);
    if (!s) return send_json(c, rc, 500, NULL);
    s->job = rc->job;
    s->fd = fd;
    pthread_mutex_lock(&s->job->mu);
    s->job->refs++;
    pthread_mutex_unlock(&s->job->mu);
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_reader, s,
                                                               stream_free);
    if (!r) {
        stream_free(s);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    rc->status = 200;
    enum MHD_Result ok = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result generate(srv_http *h, struct MHD_Connection *c, srv_conn *rc, srv_kind kind) {
    srv_request req;
    srv_error err;
    const char *body = rc->body ? rc->body : "";
    int bad = SRV_IS_INTERP(kind) ? srv_parse_interp(h->sm, kind, body, rc->n_body, &req, &err)
                                  : srv_parse_request(h->sm, kind, body, rc->n_body, &req, &err);
    if (bad) return send_error(c, rc, &err);
    srv_job *j = srv_job_new(&req);
    if (!j) {
        srv_request_free(&req);
        return send_json(c, rc, 500, NULL);
    }
    int q = srv_engine_submit(h->e, j);
    if (q) {
        srv_job_release(j);
        return send_simple_error(c, rc, 503, "server_error", q == -1 ? "server_busy" : "server_shutting_down",
                                 q == -1 ? "all slots are busy and the queue is full: retry later"
                                         : "the server is shutting down");
    }
    rc->job = j;
    int fd = conn_fd(c);
    return j->req.stream ? send_stream(c, rc, fd) : wait_and_send(c, rc, fd);
}

/* ----------------------------------------------------------------- routes */

static int authorized(const srv_http *h, struct MHD_Connection *c) {
    if (!h->cfg.api_key) return 1;
    const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!a || strncmp(a, "Bearer ", 7) != 0) return 0;
    a += 7;
    const char *k = h->cfg.api_key;
    size_t la = strlen(a), lk = strlen(k);
    unsigned diff = (unsigned)(la != lk);
    for (size_t i = 0; i < lk; i++) diff |= (unsigned char)k[i] ^ (unsigned char)(i < la ? a[i] : 0);
    return diff == 0;
}

static enum MHD_Result health(srv_http *h, struct MHD_Connection *c, srv_conn *rc) {
    int busy, queued, slots;
    srv_engine_stats(h->e, &busy, &queued, &slots);
    char buf[160];
    snprintf(buf, sizeof buf, "{\"status\":\"ok\",\"slots\":%d,\"slots_busy\":%d,\"queued\":%d}", slots, busy,
             queued);
    return send_json(c, rc, 200, strdup(buf));
}

/* POST routes that queue a job; -1 for other URLs. */
static int job_kind(const char *url) {
    static const struct {
        const char *url;
        srv_kind kind;
    } routes[] = {{"/v1/completions", SRV_COMPLETION},     {"/v1/chat/completions", SRV_CHAT},
                  {"/v1/loupe/attention", SRV_ATTENTION}, {"/v1/loupe/lens", SRV_LENS},
                  {"/v1/loupe/attribute", SRV_ATTRIBUTE}};
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++)
        if (strcmp(url, routes[i].url) == 0) return (int)routes[i].kind;
    return -1;
}

static enum MHD_Result route(srv_http *h, struct MHD_Connection *c, srv_conn *rc, const char *url,
                             const char *method) {
    int get = strcmp(method, "GET") == 0, post = strcmp(method, "POST") == 0;
    if (atomic_load(&h->draining))
        return send_simple_error(c, rc, 503, "server_error", "server_shutting_down", "the server is shutting down");
    if (strcmp(url, "/health") == 0 && get) return health(h, c, rc);
    if (!authorized(h, c))
        return send_simple_error(c, rc, 401, "invalid_request_error", "invalid_api_key",
                                 "Incorrect API key provided. Pass it as 'Authorization: Bearer KEY'.");
    if (rc->too_large) {
        char msg[128];
        snprintf(msg, sizeof msg, "the request body is larger than the limit of %zu bytes", h->cfg.max_body);
        return send_simple_error(c, rc, 400, "invalid_request_error", "request_too_large", msg);
    }
    if (strcmp(url, "/v1/models") == 0 && get) return send_json(c, rc, 200, srv_models_json(h->sm, h->started));
    if (strncmp(url, "/v1/models/", 11) == 0 && get) {
        if (strcmp(url + 11, h->sm->name) != 0)
            return send_simple_error(c, rc, 404, "invalid_request_error", "model_not_found", "no such model");
        char *list = srv_models_json(h->sm, h->started);
        cJSON *o = list ? cJSON_Parse(list) : NULL;
        free(list);
        cJSON *m = o ? cJSON_DetachItemFromArray(cJSON_GetObjectItem(o, "data"), 0) : NULL;
        char *s = m ? cJSON_PrintUnformatted(m) : NULL;
        cJSON_Delete(m);
        cJSON_Delete(o);
        return send_json(c, rc, 200, s);
    }
    int kind = job_kind(url);
    if (kind >= 0 && post) return generate(h, c, rc, (srv_kind)kind);
    int known = kind >= 0 || strcmp(url, "/v1/models") == 0 || strcmp(url, "/health") == 0;
    char msg[256];
    snprintf(msg, sizeof msg, "%s %s: %s", method, url, known ? "method not allowed" : "unknown route");
    return send_simple_error(c, rc, known ? 405 : 404, "invalid_request_error", known ? "method_not_allowed" : "not_found",
                             msg);
}

/* -------------------------------------------------------- libmicrohttpd */

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    (void)version;
    srv_http *h = cls;
    srv_conn *rc = *con_cls;
    if (!rc) {
        rc = calloc(1, sizeof *rc);
        if (!rc) return MHD_NO;
        rc->h = h;
        rc->t0 = now_ms();
        snprintf(rc->method, sizeof rc->method, "%s", method);
        snprintf(rc->url, sizeof rc->url, "%s", url);
        atomic_fetch_add(&h->active, 1);
        *con_cls = rc;
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > h->cfg.max_body) {
            rc->too_large = 1;
            return route(h, c, rc, url, method); /* answered before reading the body */
        }
        return MHD_YES;
    }
    if (*upload_size) {
        size_t n = *upload_size;
        *upload_size = 0;
        if (rc->too_large) return MHD_YES;
        if (rc->n_body + n > h->cfg.max_body) {
            rc->too_large = 1;
            free(rc->body);
            rc->body = NULL;
            rc->n_body = rc->cap_body = 0;
            return MHD_YES;
        }
        if (rc->n_body + n + 1 > rc->cap_body) {
            size_t cap = 2 * rc->cap_body + n + 1024;
            char *b = realloc(rc->body, cap);
            if (!b) return MHD_NO;
            rc->body = b;
            rc->cap_body = cap;
        }
        memcpy(rc->body + rc->n_body, upload, n);
        rc->n_body += n;
        rc->body[rc->n_body] = 0;
        return MHD_YES;
    }
    if (rc->status) return MHD_YES; /* already answered (body too large) */
    return route(h, c, rc, url, method);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)c;
    srv_http *h = cls;
    srv_conn *rc = *con_cls;
    if (!rc) return;
    if (rc->job) {
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) atomic_store(&rc->job->cancel, 1);
        srv_job_release(rc->job);
    }
    int failed = toe != MHD_REQUEST_TERMINATED_COMPLETED_OK;
    if (h->cfg.verbose || rc->status >= 500 || (failed && rc->status != 499))
        fprintf(stderr, "loupe serve: %s %s %d %.1f ms%s\n", rc->method, rc->url, rc->status ? rc->status : 499,
                now_ms() - rc->t0, failed ? " (connection closed early)" : "");
    free(rc->body);
    free(rc);
    *con_cls = NULL;
    atomic_fetch_sub(&h->active, 1);
}

static int make_addr(const char *host, int port, struct sockaddr_storage *ss, unsigned *flags) {
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *flags |= MHD_USE_IPv6;
        return 0;
    }
    return -1;
}

int srv_http_start(srv_engine *e, const srv_model *sm, const srv_config *cfg, srv_http **out) {
    struct sockaddr_storage ss;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ITC;
    if (make_addr(cfg->host, cfg->port, &ss, &flags)) {
        fprintf(stderr, "loupe: error: --host %s: not a numeric IPv4 or IPv6 address\n", cfg->host);
        return 1;
    }
    srv_http *h = calloc(1, sizeof *h);
    if (!h) return 1;
    h->e = e;
    h->sm = sm;
    h->cfg = *cfg;
    h->started = (long)time(NULL);
    unsigned limit = (unsigned)(cfg->parallel + cfg->queue + 64);
    h->d = MHD_start_daemon(flags, (uint16_t)cfg->port, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR,
                            (struct sockaddr *)&ss, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
                            MHD_OPTION_CONNECTION_LIMIT, limit, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
                            MHD_OPTION_END);
    if (!h->d) {
        fprintf(stderr, "loupe: error: cannot listen on %s:%d (port in use or no permission)\n", cfg->host,
                cfg->port);
        free(h);
        return 1;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
    h->port = di ? di->port : cfg->port;
    *out = h;
    return 0;
}

int srv_http_port(const srv_http *h) { return h->port; }

void srv_http_stop(srv_http *h, double drain_seconds) {
    atomic_store(&h->draining, 1);
    MHD_socket ls = MHD_quiesce_daemon(h->d);
    if (ls != MHD_INVALID_SOCKET) close(ls);
    double until = now_ms() + drain_seconds * 1e3;
    while (atomic_load(&h->active) > 0 && now_ms() < until) usleep(20000);
    srv_engine_stop(h->e); /* cancels what is left; waiting requests get 503 */
    /* every job is answered now: let the connection threads send the 503s
     * before the daemon closes their sockets */
    until = now_ms() + 1e3;
    while (atomic_load(&h->active) > 0 && now_ms() < until) usleep(5000);
    MHD_stop_daemon(h->d);
    free(h);
}
