/* s3.c: S3 addressing, credentials and ListObjectsV2 parsing. Signing itself is libcurl's
 * (CURLOPT_AWS_SIGV4, set up in fetch.c).
 *
 * DESIGN: credentials come from explicit options, then AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY
 * / AWS_SESSION_TOKEN, then the profile (AWS_PROFILE or "default") of ~/.aws/credentials
 * (AWS_SHARED_CREDENTIALS_FILE); the region from options, AWS_REGION, AWS_DEFAULT_REGION, the
 * profile in ~/.aws/config (AWS_CONFIG_FILE), an amazonaws.com endpoint host, else us-east-1.
 * With an endpoint (options, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, or endpoint_url in the config
 * profile) requests are path-style: <endpoint>/<bucket>/<key>. libcurl 7.88 signs the query string
 * as given and does not add x-amz-content-sha256, so list URLs are built here with parameters
 * percent-encoded and sorted, and fetch.c sends UNSIGNED-PAYLOAD itself. The XML reader is a
 * small scanner for the few elements we need (no DTDs, no namespaces), capped everywhere. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/internal.h"

#define S3_KEY_MAX 1024
#define S3_TOKEN_MAX 4096

static char *env_dup(const char *name) {
    const char *v = getenv(name);
    return v && *v ? st_strdup(v) : NULL;
}

static void trim(char *s) {
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    size_t i = 0;
    while (s[i] && isspace((unsigned char)s[i]))
        i++;
    if (i) memmove(s, s + i, n - i + 1);
}

/* Value of key in [section] of an INI file; NULL when absent. */
static char *ini_get(const char *path, const char *section, const char *key) {
    if (!path) return NULL;
    char *text;
    size_t len;
    struct st_error e;
    if (st_read_file(path, 1 << 20, &text, &len, &e)) return NULL;
    char *result = NULL;
    int in_sec = 0;
    char *save = text;
    while (save && *save) {
        char *line = save;
        char *nl = strchr(line, '\n');
        if (nl) {
            *nl = '\0';
            save = nl + 1;
        } else {
            save = NULL;
        }
        char *hash = strpbrk(line, "#;");
        if (hash && (hash == line || isspace((unsigned char)hash[-1]))) *hash = '\0';
        trim(line);
        if (!*line) continue;
        if (line[0] == '[') {
            char *end = strchr(line, ']');
            if (!end) continue;
            *end = '\0';
            char *name = line + 1;
            trim(name);
            in_sec = strcmp(name, section) == 0;
            continue;
        }
        if (!in_sec) continue;
        char *eq = strchr(line, '=');
        if (!eq) continue;
        *eq = '\0';
        char *k = line, *v = eq + 1;
        trim(k);
        trim(v);
        if (strcmp(k, key) == 0) {
            st_free(result);
            result = st_strdup(v);
        }
    }
    st_free(text);
    return result;
}

static char *home_file(const char *env, const char *rel) {
    const char *e = getenv(env);
    if (e && *e) return st_strdup(e);
    const char *home = getenv("HOME");
    if (!home || !*home) return NULL;
    size_t n = strlen(home) + strlen(rel) + 2;
    char *p = st_malloc(n);
    if (p) snprintf(p, n, "%s/%s", home, rel);
    return p;
}

void s3_cfg_free(struct s3_cfg *c) {
    st_free(c->endpoint);
    st_free(c->region);
    st_free(c->akid);
    if (c->secret) memset(c->secret, 0, strlen(c->secret));
    st_free(c->secret);
    st_free(c->token);
    memset(c, 0, sizeof *c);
}

enum st_status s3_cfg_load(struct s3_cfg *c, const struct st_stream_options *o,
                           struct st_error *err) {
    memset(c, 0, sizeof *c);
    const char *profile = o->profile;
    if (!profile || !*profile) profile = getenv("AWS_PROFILE");
    if (!profile || !*profile) profile = "default";
    char *cred_path = home_file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials");
    char *conf_path = home_file("AWS_CONFIG_FILE", ".aws/config");
    char conf_sec[256];
    if (strcmp(profile, "default") == 0)
        snprintf(conf_sec, sizeof conf_sec, "default");
    else
        snprintf(conf_sec, sizeof conf_sec, "profile %s", profile);

    /* endpoint */
    if (o->endpoint_url && *o->endpoint_url) c->endpoint = st_strdup(o->endpoint_url);
    if (!c->endpoint) c->endpoint = env_dup("AWS_ENDPOINT_URL_S3");
    if (!c->endpoint) c->endpoint = env_dup("AWS_ENDPOINT_URL");
    if (!c->endpoint) c->endpoint = ini_get(conf_path, conf_sec, "endpoint_url");
    if (c->endpoint) {
        size_t n = strlen(c->endpoint);
        while (n && c->endpoint[n - 1] == '/')
            c->endpoint[--n] = '\0';
        const char *rest;
        if (url_scheme(c->endpoint, &rest) != URL_HTTP) {
            enum st_status rc =
                st_errorf(err, ST_ERR_ARG, "S3 endpoint '%s' must start with http:// or https://",
                          c->endpoint);
            st_free(cred_path);
            st_free(conf_path);
            s3_cfg_free(c);
            return rc;
        }
    }

    /* region */
    if (o->region && *o->region) c->region = st_strdup(o->region);
    if (!c->region) c->region = env_dup("AWS_REGION");
    if (!c->region) c->region = env_dup("AWS_DEFAULT_REGION");
    if (!c->region) c->region = ini_get(conf_path, conf_sec, "region");
    if (!c->region && c->endpoint) {
        const char *h = strstr(c->endpoint, "://s3.");
        const char *aws = h ? strstr(h, ".amazonaws.com") : NULL;
        if (h && aws && aws > h + 6) {
            size_t n = (size_t)(aws - (h + 6));
            c->region = st_malloc(n + 1);
            if (c->region) {
                memcpy(c->region, h + 6, n);
                c->region[n] = '\0';
            }
        }
    }
    if (!c->region) c->region = st_strdup("us-east-1");

    /* credentials */
    c->anonymous = o->anonymous;
    if (!c->anonymous) {
        if (o->access_key_id && o->secret_access_key) {
            c->akid = st_strdup(o->access_key_id);
            c->secret = st_strdup(o->secret_access_key);
            if (o->session_token) c->token = st_strdup(o->session_token);
        } else if (getenv("AWS_ACCESS_KEY_ID") && getenv("AWS_SECRET_ACCESS_KEY")) {
            c->akid = env_dup("AWS_ACCESS_KEY_ID");
            c->secret = env_dup("AWS_SECRET_ACCESS_KEY");
            c->token = env_dup("AWS_SESSION_TOKEN");
        } else {
            c->akid = ini_get(cred_path, profile, "aws_access_key_id");
            c->secret = ini_get(cred_path, profile, "aws_secret_access_key");
            c->token = ini_get(cred_path, profile, "aws_session_token");
            if (!c->akid || !c->secret) {
                st_free(c->akid);
                st_free(c->secret);
                st_free(c->token);
                c->akid = c->secret = c->token = NULL;
                c->anonymous = 1; /* no credentials anywhere: unsigned requests (public buckets) */
            }
        }
    }
    st_free(cred_path);
    st_free(conf_path);
    if (!c->region || (!c->anonymous && (!c->akid || !c->secret))) {
        s3_cfg_free(c);
        return st_errorf(err, ST_ERR_NOMEM, "out of memory loading S3 settings");
    }
    for (const char *p = c->region; *p; p++)
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_') {
            enum st_status rc = st_errorf(err, ST_ERR_ARG, "bad S3 region '%s'", c->region);
            s3_cfg_free(c);
            return rc;
        }
    snprintf(c->sigv4, sizeof c->sigv4, "aws:amz:%s:s3", c->region);
    return ST_OK;
}

enum st_status s3_split(const char *url, char **bucket, char **key, struct st_error *err) {
    *bucket = *key = NULL;
    const char *rest;
    if (url_scheme(url, &rest) != URL_S3)
        return st_errorf(err, ST_ERR_ARG, "%s: not an s3:// URL", url);
    const char *slash = strchr(rest, '/');
    size_t bn = slash ? (size_t)(slash - rest) : strlen(rest);
    if (bn < 3 || bn > 63)
        return st_errorf(err, ST_ERR_ARG,
                         "%s: bad URL: expected s3://BUCKET/KEY with a bucket name of 3 to 63 "
                         "characters",
                         url);
    for (size_t i = 0; i < bn; i++) {
        char ch = rest[i];
        if (!(islower((unsigned char)ch) || isdigit((unsigned char)ch) || ch == '-' || ch == '.' ||
              ch == '_'))
            return st_errorf(err, ST_ERR_ARG,
                             "%s: bad URL: bucket names use a-z, 0-9, '.', '-' only", url);
    }
    *bucket = st_malloc(bn + 1);
    *key = st_strdup(slash ? slash + 1 : "");
    if (!*bucket || !*key) {
        st_free(*bucket);
        st_free(*key);
        *bucket = *key = NULL;
        return st_errorf(err, ST_ERR_NOMEM, "out of memory");
    }
    memcpy(*bucket, rest, bn);
    (*bucket)[bn] = '\0';
    return ST_OK;
}

/* "<endpoint>/<bucket>" or the AWS host for the bucket, without a trailing slash. */
static int base_url(struct dbuf *b, const struct s3_cfg *c, const char *bucket) {
    if (c->endpoint) return dbuf_printf(b, "%s/%s", c->endpoint, bucket);
    if (strchr(bucket, '.')) /* dots break TLS with virtual hosts: path-style */
        return dbuf_printf(b, "https://s3.%s.amazonaws.com/%s", c->region, bucket);
    return dbuf_printf(b, "https://%s.s3.%s.amazonaws.com", bucket, c->region);
}

enum st_status s3_object_url(const struct s3_cfg *c, const char *bucket, const char *key,
                             char **out, struct st_error *err) {
    struct dbuf b;
    dbuf_init(&b, 16384);
    if (base_url(&b, c, bucket) || dbuf_add(&b, "/", 1) || url_encode(&b, key, 1)) {
        dbuf_free(&b);
        return st_errorf(err, ST_ERR_ARG, "s3://%s/%s: key too long", bucket, key);
    }
    *out = dbuf_take(&b);
    return *out ? ST_OK : st_errorf(err, ST_ERR_NOMEM, "out of memory");
}

enum st_status s3_list_url(const struct s3_cfg *c, const char *bucket, const char *prefix,
                           const char *token, int max_keys, char **out, struct st_error *err) {
    struct dbuf b;
    dbuf_init(&b, 32768);
    /* path-style "/bucket?..." (no slash: the canonical URI is the bucket, as S3 and s3rver
     * compute it); virtual-hosted "/?..." */
    int bad =
        base_url(&b, c, bucket) || dbuf_addstr(&b, c->endpoint || strchr(bucket, '.') ? "?" : "/?");
    /* sorted by name: continuation-token < encoding-type < list-type < max-keys < prefix */
    if (token)
        bad = bad || dbuf_addstr(&b, "continuation-token=") || url_encode(&b, token, 0) ||
              dbuf_addstr(&b, "&");
    bad = bad || dbuf_printf(&b, "encoding-type=url&list-type=2&max-keys=%d", max_keys);
    if (prefix && *prefix) bad = bad || dbuf_addstr(&b, "&prefix=") || url_encode(&b, prefix, 0);
    if (bad) {
        dbuf_free(&b);
        return st_errorf(err, ST_ERR_ARG, "s3://%s/%s: listing URL too long", bucket, prefix);
    }
    *out = dbuf_take(&b);
    return *out ? ST_OK : st_errorf(err, ST_ERR_NOMEM, "out of memory");
}

/* ---- XML ---- */

/* Append the UTF-8 encoding of code point cp. */
static int put_utf8(char *out, size_t cap, size_t *k, unsigned long cp) {
    char u[4];
    int n;
    if (cp < 0x80)
        u[0] = (char)cp, n = 1;
    else if (cp < 0x800)
        u[0] = (char)(0xC0 | (cp >> 6)), u[1] = (char)(0x80 | (cp & 63)), n = 2;
    else if (cp < 0x10000)
        u[0] = (char)(0xE0 | (cp >> 12)), u[1] = (char)(0x80 | ((cp >> 6) & 63)),
        u[2] = (char)(0x80 | (cp & 63)), n = 3;
    else if (cp < 0x110000)
        u[0] = (char)(0xF0 | (cp >> 18)), u[1] = (char)(0x80 | ((cp >> 12) & 63)),
        u[2] = (char)(0x80 | ((cp >> 6) & 63)), u[3] = (char)(0x80 | (cp & 63)), n = 4;
    else
        return 1;
    if (*k + (size_t)n >= cap) return 1;
    memcpy(out + *k, u, (size_t)n);
    *k += (size_t)n;
    return 0;
}

/* Decode XML text [s, e) into out; 0 on success, 1 (out = "") when it does not fit or is
 * malformed. */
static int xml_text_raw(const char *s, const char *e, char *out, size_t cap);
static int xml_text(const char *s, const char *e, char *out, size_t cap) {
    int r = xml_text_raw(s, e, out, cap);
    if (r && cap) out[0] = '\0';
    return r;
}
static int xml_text_raw(const char *s, const char *e, char *out, size_t cap) {
    size_t k = 0;
    if (!cap) return 1;
    while (s < e) {
        if (*s == '&') {
            const char *semi = memchr(s, ';', (size_t)(e - s));
            if (!semi || semi - s > 12) return 1;
            size_t n = (size_t)(semi - s - 1);
            const char *name = s + 1;
            unsigned long cp;
            if (n == 3 && memcmp(name, "amp", 3) == 0)
                cp = '&';
            else if (n == 2 && memcmp(name, "lt", 2) == 0)
                cp = '<';
            else if (n == 2 && memcmp(name, "gt", 2) == 0)
                cp = '>';
            else if (n == 4 && memcmp(name, "quot", 4) == 0)
                cp = '"';
            else if (n == 4 && memcmp(name, "apos", 4) == 0)
                cp = '\'';
            else if (n >= 2 && name[0] == '#') {
                char num[16];
                memcpy(num, name + 1, n - 1);
                num[n - 1] = '\0';
                char *end;
                int hex = num[0] == 'x' || num[0] == 'X';
                cp = strtoul(num + hex, &end, hex ? 16 : 10);
                if (*end || end == num + hex || cp == 0) return 1;
            } else {
                return 1;
            }
            if (put_utf8(out, cap, &k, cp)) return 1;
            s = semi + 1;
            continue;
        }
        if (k + 1 >= cap) return 1;
        out[k++] = *s++;
    }
    out[k] = '\0';
    return 0;
}

/* Find <tag ...>...</tag> in [s, e) (attributes allowed): returns 0 and the content bounds. */
static int xml_find(const char *s, const char *e, const char *tag, const char **cs,
                    const char **ce) {
    char open[64], close[64];
    int no = snprintf(open, sizeof open, "<%s", tag),
        nc = snprintf(close, sizeof close, "</%s>", tag);
    size_t lo = (size_t)no, lc = (size_t)nc;
    for (const char *p = s; p + lo < e; p++) {
        if (*p != '<' || memcmp(p, open, lo) != 0) continue;
        const char *a = p + lo;
        if (*a != '>' && *a != ' ' && *a != '\t' && *a != '\n' && *a != '\r') continue;
        while (a < e && *a != '>')
            a++;
        if (a >= e) return 1;
        if (a[-1] == '/') continue; /* <tag/>: empty, keep looking */
        const char *c = a + 1;
        for (const char *q = c; q + lc <= e; q++) {
            if (*q == '<' && memcmp(q, close, lc) == 0) {
                *cs = c;
                *ce = q;
                return 0;
            }
        }
        return 1;
    }
    return 1;
}

int xml_tag_text(const char *xml, size_t len, const char *tag, char *out, size_t cap) {
    const char *cs, *ce;
    if (cap) out[0] = '\0';
    if (xml_find(xml, xml + len, tag, &cs, &ce)) return 1;
    return xml_text(cs, ce, out, cap);
}

void s3_list_page_free(struct s3_list_page *p) {
    for (size_t i = 0; i < p->n; i++) {
        st_free(p->objs[i].key);
        st_free(p->objs[i].etag);
    }
    st_free(p->objs);
    st_free(p->next_token);
    memset(p, 0, sizeof *p);
}

enum st_status s3_parse_list(const char *xml, size_t len, struct s3_list_page *out,
                             struct st_error *err) {
    memset(out, 0, sizeof *out);
    const char *e = xml + len, *rs, *re;
    if (xml_find(xml, e, "ListBucketResult", &rs, &re))
        return st_errorf(err, ST_ERR_FORMAT, "listing answer is not a ListBucketResult document");
    char tmp[64];
    int url_enc = xml_tag_text(rs, (size_t)(re - rs), "EncodingType", tmp, sizeof tmp) == 0 &&
                  strcmp(tmp, "url") == 0;
    out->truncated = xml_tag_text(rs, (size_t)(re - rs), "IsTruncated", tmp, sizeof tmp) == 0 &&
                     strcmp(tmp, "true") == 0;
    size_t cap = 0;
    const char *p = rs;
    char *key = st_malloc(S3_KEY_MAX * 3 + 1), *etag = st_malloc(256);
    enum st_status rc = ST_OK;
    if (!key || !etag) {
        rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
        goto done;
    }
    for (;;) {
        const char *cs, *ce;
        if (xml_find(p, re, "Contents", &cs, &ce)) break;
        char size_s[32];
        if (xml_tag_text(cs, (size_t)(ce - cs), "Key", key, S3_KEY_MAX * 3 + 1) ||
            xml_tag_text(cs, (size_t)(ce - cs), "Size", size_s, sizeof size_s)) {
            rc = st_errorf(err, ST_ERR_FORMAT,
                           "listing entry %zu has no valid Key/Size (or the key is too long)",
                           out->n);
            goto done;
        }
        if (xml_tag_text(cs, (size_t)(ce - cs), "ETag", etag, 256)) etag[0] = '\0';
        if (url_enc && url_decode_inplace(key, 1)) {
            rc = st_errorf(err, ST_ERR_FORMAT, "listing key '%s' has a bad %%-escape", key);
            goto done;
        }
        int64_t size;
        if (st_parse_i64(size_s, 0, INT64_MAX, &size)) {
            rc = st_errorf(err, ST_ERR_FORMAT, "listing entry '%s' has a bad Size '%s'", key,
                           size_s);
            goto done;
        }
        if (out->n == cap) {
            size_t nc = cap ? cap * 2 : 64;
            if (nc > 100000) {
                rc = st_errorf(err, ST_ERR_FORMAT, "listing page has too many entries");
                goto done;
            }
            struct s3_obj *o = st_realloc(out->objs, nc * sizeof *o);
            if (!o) {
                rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
                goto done;
            }
            out->objs = o;
            cap = nc;
        }
        struct s3_obj *o = &out->objs[out->n];
        o->key = st_strdup(key);
        o->etag = etag[0] ? st_strdup(etag) : NULL;
        o->size = (uint64_t)size;
        if (!o->key || (etag[0] && !o->etag)) {
            st_free(o->key);
            st_free(o->etag);
            rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
            goto done;
        }
        out->n++;
        p = ce;
    }
    if (out->truncated) {
        char *tok = st_malloc(S3_TOKEN_MAX);
        if (!tok) {
            rc = st_errorf(err, ST_ERR_NOMEM, "out of memory");
            goto done;
        }
        if (xml_tag_text(rs, (size_t)(re - rs), "NextContinuationToken", tok, S3_TOKEN_MAX) ||
            !tok[0]) {
            st_free(tok);
            rc = st_errorf(err, ST_ERR_FORMAT,
                           "listing is truncated but has no NextContinuationToken");
            goto done;
        }
        out->next_token = tok;
    }
done:
    st_free(key);
    st_free(etag);
    if (rc) s3_list_page_free(out);
    return rc;
}

void s3_parse_error(const char *xml, size_t len, char *code, size_t code_cap, char *msg,
                    size_t msg_cap) {
    code[0] = msg[0] = '\0';
    const char *cs, *ce;
    if (xml_find(xml, xml + len, "Error", &cs, &ce)) return;
    if (xml_tag_text(cs, (size_t)(ce - cs), "Code", code, code_cap)) code[0] = '\0';
    if (xml_tag_text(cs, (size_t)(ce - cs), "Message", msg, msg_cap)) msg[0] = '\0';
    for (char *p = msg; *p; p++)
        if (*p == '\n' || *p == '\r') *p = ' ';
}
