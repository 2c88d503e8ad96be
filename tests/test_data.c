/* test_data.c: the data layer's parts, without servers: SHA-256, brace lists, URLs and sizes,
 * the JSONL splitter and JSON checker, the tar/WebDataset reader (every split of its input),
 * gzip/zstd decoding with frame boundaries and corrupt-input messages, S3 listing XML and list
 * URLs, credentials from the environment and ~/.aws files, index manifests; and the saved inputs
 * of the data fuzz targets (fuzz/corpus/{tar,jsonl,index,s3_list}, fuzz/crashers/...) replayed
 * through their entry points. */
#define LLVMFuzzerTestOneInput st_fuzz_tar_one
#include "../fuzz/fuzz_tar.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput st_fuzz_jsonl_one
#include "../fuzz/fuzz_jsonl.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput st_fuzz_index_one
#include "../fuzz/fuzz_index.c"
#undef LLVMFuzzerTestOneInput
#define LLVMFuzzerTestOneInput st_fuzz_s3_list_one
#include "../fuzz/fuzz_s3_list.c"
#undef LLVMFuzzerTestOneInput

#include "data/internal.h"
#include "harness.h"
#include "servers/helpers.h"

/* ---- collectors ---- */
struct got {
    int n;
    char keys[64][512];
    char data[64][256];
    char names[64][64];
    uint64_t off[64], end[64], index[64];
    int pause_every;
};

static int collect(void *ctx, const struct rec *r, struct st_error *err) {
    struct got *g = ctx;
    if (g->n < 64) {
        snprintf(g->keys[g->n], 512, "%s", r->key ? r->key : "");
        size_t k = 0;
        for (int f = 0; f < r->n_fields; f++)
            k += (size_t)snprintf(g->data[g->n] + k, 256 - (k < 256 ? k : 256), "%s%s=%.*s",
                                  f ? "|" : "", r->fields[f].name, (int)r->fields[f].size,
                                  (const char *)r->fields[f].data);
        g->off[g->n] = r->offset;
        g->end[g->n] = r->end;
        g->index[g->n] = r->index;
    }
    g->n++;
    return g->pause_every && g->n % g->pause_every == 0 ? 1 : 0;
}

TEST(sha256_vectors) {
    struct sha256 c;
    char hex[65];
    sha256_init(&c);
    sha256_final_hex(&c, hex);
    CHECK(strcmp(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855") == 0);
    sha256_init(&c);
    sha256_update(&c, "abc", 3);
    sha256_final_hex(&c, hex);
    CHECK(strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") == 0);
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    sha256_init(&c);
    for (size_t i = 0; i < strlen(m); i++)
        sha256_update(&c, m + i, 1); /* byte by byte */
    sha256_final_hex(&c, hex);
    CHECK(strcmp(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1") == 0);
    sha256_init(&c);
    char a[1000];
    memset(a, 'a', sizeof a);
    for (int i = 0; i < 1000; i++)
        sha256_update(&c, a, sizeof a);
    sha256_final_hex(&c, hex);
    CHECK(strcmp(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0") == 0);
}

TEST(brace_and_sizes) {
    char **v;
    size_t n;
    struct st_error err;
    CHECK(brace_expand("s-{008..011}.tar", 100, &v, &n, &err) == ST_OK);
    CHECK(n == 4 && strcmp(v[0], "s-008.tar") == 0 && strcmp(v[3], "s-011.tar") == 0);
    str_array_free(v, n);
    CHECK(brace_expand("{a,b}/{1..2}", 100, &v, &n, &err) == ST_OK);
    CHECK(n == 4 && strcmp(v[0], "a/1") == 0 && strcmp(v[1], "a/2") == 0 &&
          strcmp(v[3], "b/2") == 0);
    str_array_free(v, n);
    CHECK(brace_expand("plain{x}", 100, &v, &n, &err) == ST_OK);
    CHECK(n == 1 && strcmp(v[0], "plain{x}") == 0);
    str_array_free(v, n);
    CHECK(brace_expand("s-{0..999999999}", 1000, &v, &n, &err) == ST_ERR_ARG);
    CHECKF(strstr(err.msg, "more than 1000") != NULL, "%s", err.msg);
    size_t sz;
    CHECK(st_parse_size("512M", &sz) == 0 && sz == (size_t)512 << 20);
    CHECK(st_parse_size("1.5GiB", &sz) == 0 && sz == (size_t)3 << 29);
    CHECK(st_parse_size("4096", &sz) == 0 && sz == 4096);
    CHECK(st_parse_size("12Q", &sz) != 0 && st_parse_size("", &sz) != 0);
    struct dbuf b;
    dbuf_init(&b, 100);
    CHECK(url_encode(&b, "a b/c+d=é~", 1) == 0);
    CHECK(strcmp(b.p, "a%20b/c%2Bd%3D%C3%A9~") == 0);
    dbuf_free(&b);
    char s[] = "x%2Fy+z";
    CHECK(url_decode_inplace(s, 1) == 0 && strcmp(s, "x/y z") == 0);
    const char *rest;
    CHECK(url_scheme("s3://b/k", &rest) == URL_S3 && strcmp(rest, "b/k") == 0);
    CHECK(url_scheme("https://h/x", &rest) == URL_HTTP);
    CHECK(url_scheme("/data/x.jsonl", &rest) == URL_FILE);
    CHECK(url_scheme("ftp://h/x", &rest) == -1);
}

TEST(jsonl_splitting) {
    const char *text = "{\"a\": 1}\r\n\n  \n[1, 2]\n\"s\"\n{\"last\": true}";
    size_t n = strlen(text);
    /* every way of cutting the input in two gives the same records */
    for (size_t cut = 0; cut <= n; cut++) {
        struct jsonl p;
        jsonl_init(&p, 100, 7, 1000, 1);
        struct got g = {0};
        struct st_error err;
        size_t used;
        CHECK(jsonl_feed(&p, (const uint8_t *)text, cut, &used, collect, &g, "t", &err) == ST_OK);
        CHECK(used == cut);
        CHECK(jsonl_feed(&p, (const uint8_t *)text + cut, n - cut, &used, collect, &g, "t", &err) ==
              ST_OK);
        CHECK(jsonl_end(&p, collect, &g, "t", &err) == ST_OK);
        CHECK(g.n == 4);
        CHECK(strcmp(g.data[0], "json={\"a\": 1}") == 0);
        CHECK(strcmp(g.data[1], "json=[1, 2]") == 0);
        CHECK(strcmp(g.data[3], "json={\"last\": true}") == 0);
        CHECK(g.index[0] == 7 && g.index[3] == 10);
        CHECK(g.off[0] == 100 && g.end[0] == 110 && g.off[1] == 114);
        jsonl_free(&p);
    }
    /* pause after each record: feed returns early with the rest unused */
    struct jsonl p;
    jsonl_init(&p, 0, 0, 1000, 1);
    struct got g = {0};
    g.pause_every = 1;
    struct st_error err;
    size_t used, total = 0;
    while (total < n) {
        CHECK(jsonl_feed(&p, (const uint8_t *)text + total, n - total, &used, collect, &g, "t",
                         &err) == ST_OK);
        total += used;
    }
    CHECK(jsonl_end(&p, collect, &g, "t", &err) == ST_OK);
    CHECK(g.n == 4);
    jsonl_free(&p);
}

TEST(jsonl_errors) {
    struct jsonl p;
    struct got g = {0};
    struct st_error err;
    size_t used;
    jsonl_init(&p, 0, 0, 1000, 1);
    const char *bad = "{\"ok\": 1}\n{\"id\": 5, \"text\": \"unterminated}\n";
    CHECK(jsonl_feed(&p, (const uint8_t *)bad, strlen(bad), &used, collect, &g, "data.jsonl",
                     &err) == ST_ERR_FORMAT);
    CHECKF(strstr(err.msg, "data.jsonl: line 2 (byte offset") != NULL &&
               strstr(err.msg, "invalid JSON") != NULL,
           "%s", err.msg);
    jsonl_free(&p);
    /* a UTF-8 byte-order mark before the first record is not part of it */
    jsonl_init(&p, 0, 0, 1000, 1);
    g = (struct got){0};
    const char *bom = "\xef\xbb\xbf{\"a\": 1}\n{\"b\": 2}\n";
    CHECKF(jsonl_feed(&p, (const uint8_t *)bom, strlen(bom), &used, collect, &g, "d", &err) == ST_OK,
           "%s", err.msg);
    CHECKF(g.n == 2 && strcmp(g.data[0], "json={\"a\": 1}") == 0 && g.off[0] == 3, "%s", g.data[0]);
    jsonl_free(&p);
    jsonl_init(&p, 0, 0, 16, 0);
    const char *longl = "{\"x\": \"0123456789012345678901234\"}\n";
    CHECK(jsonl_feed(&p, (const uint8_t *)longl, strlen(longl), &used, collect, &g, "d", &err) ==
          ST_ERR_FORMAT);
    CHECKF(strstr(err.msg, "longer than 16 bytes") != NULL, "%s", err.msg);
    jsonl_free(&p);
    size_t at;
    const char *good[] = {"{}",
                          "[]",
                          "0",
                          "-1.5e+3",
                          "\"\\u00e9\\n\"",
                          "{\"a\":[true,false,null]}",
                          " { \"k\" : { } } ",
                          "\"caf\xc3\xa9 \xe6\x97\xa5 \xf0\x9f\x98\x80\""};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++)
        CHECKF(jsonl_check_record((const uint8_t *)good[i], strlen(good[i]), &at) == 0, "%s",
               good[i]);
    /* ... and strings that are not UTF-8: a stray byte, a truncated sequence, an overlong
     * '/', a surrogate, a code point past U+10FFFF */
    const char *badj[] = {"{",   "{\"a\"}", "[1,]",     "01",       "1.", "\"\\x\"",
                          "tru", "{} x",    "\"a\tb\"", "{'a': 1}", "-",
                          "{\"a\":\"\xff\xfe\"}", "\"\xe6\x97\"", "\"\xc0\xaf\"",
                          "\"\xed\xa0\x80\"", "\"\xf4\x90\x80\x80\""};
    for (size_t i = 0; i < sizeof badj / sizeof *badj; i++)
        CHECKF(jsonl_check_record((const uint8_t *)badj[i], strlen(badj[i]), &at) != 0, "%s",
               badj[i]);
    char deep[2000];
    memset(deep, '[', sizeof deep);
    CHECK(jsonl_check_record((const uint8_t *)deep, sizeof deep, &at) != 0); /* depth cap */
}

static void pax_record(struct tbuf *b, const char *kv) {
    size_t n = strlen(kv) + 2, len = n + 1;
    while (len != n + (size_t)snprintf(NULL, 0, "%zu", len))
        len = n + (size_t)snprintf(NULL, 0, "%zu", len);
    tb_printf(b, "%zu %s\n", len, kv);
}

static void tar_header_typed(struct tbuf *t, const char *name, char type, const void *d, size_t n) {
    struct tbuf tmp = {0};
    td_tar_member(&tmp, name, d, n);
    tmp.p[156] = (uint8_t)type;
    memset(tmp.p + 148, ' ', 8);
    unsigned sum = 0;
    for (int i = 0; i < 512; i++)
        sum += tmp.p[i];
    snprintf((char *)tmp.p + 148, 8, "%06o", sum);
    tmp.p[155] = ' ';
    tb_add(t, tmp.p, tmp.n);
    free(tmp.p);
}

static struct tbuf sample_tar(void) {
    struct tbuf t = {0};
    td_tar_member(&t, "a/x001.jpg", "JPEG", 4);
    td_tar_member(&t, "a/x001.seg.PNG", "PNG!", 4);
    td_tar_member(&t, "a/x001.json", "{}", 2);
    td_tar_member(&t, "__meta__/info.txt", "skip me", 7);
    td_tar_member(&t, "noext", "skip", 4);
    td_tar_member(&t, "a/x002.txt", "", 0);
    /* pax path for a long name, then a GNU long name */
    char longname[300];
    memset(longname, 'd', 200);
    snprintf(longname + 200, 100, "/x003.txt");
    struct tbuf pax = {0};
    char kv[400];
    snprintf(kv, sizeof kv, "path=%s", longname);
    pax_record(&pax, kv);
    tar_header_typed(&t, "PaxHeader", 'x', pax.p, pax.n);
    td_tar_member(&t, "ignored-name.txt", "three", 5);
    free(pax.p);
    char gnu[300];
    memset(gnu, 'e', 150);
    snprintf(gnu + 150, 100, "/x004.cls");
    tar_header_typed(&t, "././@LongLink", 'L', gnu, strlen(gnu) + 1);
    td_tar_member(&t, "short", "4", 1);
    tar_header_typed(&t, "adir/", '5', NULL, 0);
    td_tar_end(&t);
    return t;
}

TEST(tar_reader) {
    struct tbuf t = sample_tar();
    /* every split point of the archive gives the same samples */
    for (size_t cut = 0; cut <= t.n; cut += (cut < 2048 ? 1 : 97)) {
        struct tar tr;
        tar_init(&tr, 0, 0, 1 << 20);
        struct got g = {0};
        struct st_error err = {0};
        size_t used;
        CHECK(tar_feed(&tr, t.p, cut, &used, collect, &g, "t.tar", &err) == ST_OK);
        CHECK(tar_feed(&tr, t.p + cut, t.n - cut, &used, collect, &g, "t.tar", &err) == ST_OK);
        CHECK(tar_end(&tr, collect, &g, "t.tar", &err) == ST_OK);
        CHECKF(g.n == 4, "cut %zu: %d samples (%s)", cut, g.n, err.msg);
        if (g.n == 4) {
            CHECK(strcmp(g.keys[0], "a/x001") == 0);
            CHECKF(strcmp(g.data[0], "jpg=JPEG|seg.png=PNG!|json={}") == 0, "%s", g.data[0]);
            CHECK(strcmp(g.keys[1], "a/x002") == 0 && strcmp(g.data[1], "txt=") == 0);
            CHECKF(strlen(g.keys[2]) == 205 && strcmp(g.data[2], "txt=three") == 0, "%zu %s %s",
                   strlen(g.keys[2]), g.keys[2], g.data[2]);
            CHECKF(strlen(g.keys[3]) == 155 && strcmp(g.data[3], "cls=4") == 0, "%zu %s",
                   strlen(g.keys[3]), g.data[3]);
            CHECK(g.off[0] == 0 && g.end[0] == 3 * 1024);
            CHECK(g.off[1] == g.end[0] + 2 * 1024); /* after the skipped members */
        }
        tar_free(&tr);
    }
    /* restart at a sample's end offset gives the following samples */
    struct tar tr;
    tar_init(&tr, 3 * 1024, 1, 1 << 20);
    struct got g = {0};
    struct st_error err;
    size_t used;
    CHECK(tar_feed(&tr, t.p + 3 * 1024, t.n - 3 * 1024, &used, collect, &g, "t", &err) == ST_OK);
    CHECK(tar_end(&tr, collect, &g, "t", &err) == ST_OK);
    CHECK(g.n == 3 && strcmp(g.keys[0], "a/x002") == 0 && g.index[0] == 1);
    tar_free(&tr);
    free(t.p);
}

TEST(tar_errors) {
    struct st_error err;
    struct got g = {0};
    size_t used;
    struct tar tr;
    /* bad checksum */
    struct tbuf t = {0};
    td_tar_member(&t, "a.txt", "x", 1);
    t.p[0] ^= 1;
    tar_init(&tr, 0, 0, 1 << 20);
    CHECK(tar_feed(&tr, t.p, t.n, &used, collect, &g, "bad.tar", &err) == ST_ERR_FORMAT);
    CHECKF(strstr(err.msg, "bad.tar: corrupt tar: bad header checksum at byte offset 0") != NULL,
           "%s", err.msg);
    tar_free(&tr);
    free(t.p);
    /* not a tar at all (JSON text) */
    const char *txt = "{\"this is\": \"not a tar\"}\n";
    char blk[512] = {0};
    memcpy(blk, txt, strlen(txt));
    tar_init(&tr, 0, 0, 1 << 20);
    CHECK(tar_feed(&tr, (const uint8_t *)blk, 512, &used, collect, &g, "x.tar", &err) ==
          ST_ERR_FORMAT);
    tar_free(&tr);
    /* truncated in a member */
    t = (struct tbuf){0};
    td_tar_member(&t, "a.txt", "hello world", 11);
    tar_init(&tr, 0, 0, 1 << 20);
    CHECK(tar_feed(&tr, t.p, 520, &used, collect, &g, "cut.tar", &err) == ST_OK);
    CHECK(tar_end(&tr, collect, &g, "cut.tar", &err) == ST_ERR_FORMAT);
    CHECKF(strstr(err.msg, "cut.tar: truncated tar") != NULL, "%s", err.msg);
    tar_free(&tr);
    free(t.p);
    /* duplicate extension */
    t = (struct tbuf){0};
    td_tar_member(&t, "k.txt", "1", 1);
    td_tar_member(&t, "k.TXT", "2", 1);
    tar_init(&tr, 0, 0, 1 << 20);
    CHECK(tar_feed(&tr, t.p, t.n, &used, collect, &g, "dup.tar", &err) == ST_ERR_FORMAT);
    CHECKF(strstr(err.msg, "repeats extension 'txt'") != NULL, "%s", err.msg);
    tar_free(&tr);
    free(t.p);
    /* a member larger than the record cap */
    t = (struct tbuf){0};
    char big[3000];
    memset(big, 'b', sizeof big);
    td_tar_member(&t, "k.bin", big, sizeof big);
    tar_init(&tr, 0, 0, 1000);
    CHECK(tar_feed(&tr, t.p, t.n, &used, collect, &g, "big.tar", &err) == ST_ERR_FORMAT);
    CHECKF(strstr(err.msg, "larger than 1000 bytes") != NULL, "%s", err.msg);
    tar_free(&tr);
    free(t.p);
    size_t kl;
    const char *ext;
    CHECK(wds_split("a/b.seg.png", &kl, &ext) == 0 && kl == 3 && strcmp(ext, "seg.png") == 0);
    CHECK(wds_split("dir.v2/file", &kl, &ext) == 1);
    CHECK(wds_split(".hidden", &kl, &ext) == 1);
}

/* decode all of in (in pieces of `step`), returning output and the frame-end offsets */
static int decode_all(enum comp kind, const uint8_t *in, size_t n, size_t step, struct tbuf *out,
                      uint64_t *ends, int *n_ends, struct st_error *err) {
    struct decomp d;
    if (decomp_init(&d, kind, 20, 0, "f", err)) return 1;
    uint8_t buf[777];
    size_t pos = 0;
    *n_ends = 0;
    int rc = 0;
    while (!rc) {
        size_t len = n - pos < step ? n - pos : step, used, ol;
        int fe;
        if (decomp_run(&d, in + pos, len, &used, buf, sizeof buf, &ol, &fe, "f", err)) {
            rc = 1;
            break;
        }
        tb_add(out, buf, ol);
        pos += used;
        if (fe && *n_ends < 64) ends[(*n_ends)++] = pos;
        if (pos == n && !ol && !fe) break;
    }
    if (!rc && decomp_finish(&d, "f", err)) rc = 1;
    decomp_free(&d);
    return rc;
}

TEST(decompression) {
    struct tbuf raw = {0};
    for (int i = 0; i < 300; i++)
        tb_printf(&raw, "{\"id\": %d, \"pad\": \"%0*d\"}\n", i, i % 50, 0);
    struct tbuf z = {0}, g1 = {0}, g2 = {0};
    td_zstd(raw.p, raw.n, 100, &z); /* three frames */
    td_gzip(raw.p, raw.n / 2, &g1);
    td_gzip(raw.p + raw.n / 2, raw.n - raw.n / 2, &g2);
    tb_add(&g1, g2.p, g2.n); /* two gzip members */
    CHECK(decomp_sniff(z.p, z.n) == COMP_ZSTD && decomp_sniff(g1.p, g1.n) == COMP_GZIP);
    CHECK(decomp_sniff((const uint8_t *)"{}", 2) == COMP_NONE);
    CHECK(comp_from_name("a.jsonl.zst") == COMP_ZSTD && comp_from_name("b.tgz") == COMP_GZIP);
    size_t steps[] = {1, 13, 4096, 1 << 20};
    for (size_t si = 0; si < 4; si++) {
        struct tbuf out = {0};
        uint64_t ends[64];
        int ne;
        struct st_error err;
        CHECK(decode_all(COMP_ZSTD, z.p, z.n, steps[si], &out, ends, &ne, &err) == 0);
        CHECK(out.n == raw.n && memcmp(out.p, raw.p, raw.n) == 0);
        CHECKF(ne == 3 && ends[2] == z.n, "zstd frame ends %d", ne);
        free(out.p);
        out = (struct tbuf){0};
        CHECK(decode_all(COMP_GZIP, g1.p, g1.n, steps[si], &out, ends, &ne, &err) == 0);
        CHECK(out.n == raw.n && memcmp(out.p, raw.p, raw.n) == 0);
        CHECK(ne == 2 && ends[0] == g1.n - g2.n && ends[1] == g1.n);
        free(out.p);
    }
    /* a restart from the second zstd frame decodes the rest */
    {
        struct tbuf out = {0};
        uint64_t ends[64];
        int ne;
        struct st_error err;
        CHECK(decode_all(COMP_ZSTD, z.p, z.n, 1 << 20, &out, ends, &ne, &err) == 0);
        struct tbuf tail = {0};
        CHECK(decode_all(COMP_ZSTD, z.p + ends[0], z.n - ends[0], 100, &tail, ends, &ne, &err) ==
              0);
        CHECK(tail.n < raw.n && memcmp(tail.p, raw.p + (raw.n - tail.n), tail.n) == 0);
        free(out.p);
        free(tail.p);
    }
    /* corrupt and truncated inputs */
    struct tbuf bad = {0};
    tb_add(&bad, g2.p, g2.n);
    for (size_t i = 12; i < 40 && i < bad.n; i++)
        bad.p[i] ^= 0x5a;
    struct tbuf out = {0};
    uint64_t ends[64];
    int ne;
    struct st_error err = {0};
    CHECK(decode_all(COMP_GZIP, bad.p, bad.n, 4096, &out, ends, &ne, &err) == 1);
    CHECKF(strstr(err.msg, "f: corrupt gzip data near compressed byte") != NULL, "%s", err.msg);
    free(out.p);
    out = (struct tbuf){0};
    CHECK(decode_all(COMP_GZIP, g2.p, g2.n - 10, 4096, &out, ends, &ne, &err) == 1);
    CHECKF(strstr(err.msg, "truncated gzip data") != NULL, "%s", err.msg);
    free(out.p);
    out = (struct tbuf){0};
    CHECK(decode_all(COMP_ZSTD, z.p, z.n - 5, 4096, &out, ends, &ne, &err) == 1);
    CHECKF(strstr(err.msg, "truncated zstd data") != NULL, "%s", err.msg);
    free(out.p);
    /* damage in the second frame: the error names a byte range that holds it (zstd does not
     * say where in its input it failed) */
    {
        struct tbuf zb = {0};
        tb_add(&zb, z.p, z.n);
        size_t at = z.n / 2;
        for (size_t i = at; i < at + 8; i++)
            zb.p[i] ^= 0xa5;
        out = (struct tbuf){0};
        CHECK(decode_all(COMP_ZSTD, zb.p, zb.n, 4096, &out, ends, &ne, &err) == 1);
        unsigned long long lo = 0, hi = 0;
        const char *m = strstr(err.msg, "corrupt zstd data in compressed bytes ");
        CHECKF(m && sscanf(m, "corrupt zstd data in compressed bytes %llu to %llu", &lo, &hi) == 2,
               "%s", err.msg);
        CHECKF(lo <= at && hi > at, "damage at %zu, reported %llu to %llu", at, lo, hi);
        free(out.p);
        free(zb.p);
    }
    /* pzstd's layout: a skippable frame (magic 0x184D2A50-5F, 4-byte size, payload) before
     * each frame; sniffed as zstd and decoded through */
    {
        struct tbuf pz = {0};
        const uint8_t skip[] = {0x5e, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4};
        tb_add(&pz, skip, sizeof skip);
        tb_add(&pz, z.p, z.n);
        CHECK(decomp_sniff(pz.p, pz.n) == COMP_ZSTD);
        out = (struct tbuf){0};
        CHECKF(decode_all(COMP_ZSTD, pz.p, pz.n, 13, &out, ends, &ne, &err) == 0, "%s", err.msg);
        CHECK(out.n == raw.n && memcmp(out.p, raw.p, raw.n) == 0);
        free(out.p);
        free(pz.p);
    }
    /* zero bytes after the last gzip member are padding (gzip -t accepts them); anything else
     * after them is still an error */
    {
        struct tbuf gp = {0};
        tb_add(&gp, g1.p, g1.n);
        const uint8_t zeros[1024] = {0};
        tb_add(&gp, zeros, sizeof zeros);
        size_t gsteps[] = {1, 100, 1 << 20};
        for (size_t si = 0; si < 3; si++) {
            out = (struct tbuf){0};
            CHECKF(decode_all(COMP_GZIP, gp.p, gp.n, gsteps[si], &out, ends, &ne, &err) == 0,
                   "%s", err.msg);
            CHECK(out.n == raw.n && memcmp(out.p, raw.p, raw.n) == 0);
            free(out.p);
        }
        out = (struct tbuf){0};
        CHECK(decode_all(COMP_GZIP, zeros, sizeof zeros, 4096, &out, ends, &ne, &err) == 1);
        free(out.p);
        tb_add(&gp, "junk", 4);
        out = (struct tbuf){0};
        CHECK(decode_all(COMP_GZIP, gp.p, gp.n, 4096, &out, ends, &ne, &err) == 1);
        CHECKF(strstr(err.msg, "corrupt gzip data near compressed byte") != NULL, "%s", err.msg);
        free(out.p);
        free(gp.p);
    }
    free(raw.p);
    free(z.p);
    free(g1.p);
    free(g2.p);
    free(bad.p);
}

TEST(s3_xml) {
    const char *xml =
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        "<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>b</Name>"
        "<Prefix>d/</Prefix><KeyCount>2</KeyCount><MaxKeys>2</MaxKeys><EncodingType>url</"
        "EncodingType>"
        "<IsTruncated>true</IsTruncated><Contents><Key>d/a%20b%2Bc.jsonl</Key>"
        "<LastModified>2024-01-01T00:00:00.000Z</LastModified><ETag>&quot;abc123&quot;</ETag>"
        "<Size>1234</Size><StorageClass>STANDARD</StorageClass></Contents>"
        "<Contents><Key>d/x&amp;y.tar</Key><ETag>\"e2\"</ETag><Size>0</Size></Contents>"
        "<NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</"
        "NextContinuationToken>"
        "</ListBucketResult>";
    struct s3_list_page pg;
    struct st_error err;
    CHECK(s3_parse_list(xml, strlen(xml), &pg, &err) == ST_OK);
    CHECK(pg.n == 2 && pg.truncated);
    CHECK(strcmp(pg.objs[0].key, "d/a b+c.jsonl") == 0 && pg.objs[0].size == 1234);
    CHECK(strcmp(pg.objs[0].etag, "\"abc123\"") == 0);
    CHECKF(strcmp(pg.objs[1].key, "d/x&y.tar") == 0, "%s", pg.objs[1].key);
    CHECK(strcmp(pg.next_token, "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=") == 0);
    s3_list_page_free(&pg);
    CHECK(s3_parse_list("<Error><Code>AccessDenied</Code></Error>", 40, &pg, &err) ==
          ST_ERR_FORMAT);
    const char *trunc = "<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>";
    CHECK(s3_parse_list(trunc, strlen(trunc), &pg, &err) == ST_ERR_FORMAT);
    char code[64], msg[128];
    const char *e = "<?xml?><Error><Code>SignatureDoesNotMatch</Code><Message>The request "
                    "signature &lt;x&gt;\ndoes not match</Message></Error>";
    s3_parse_error(e, strlen(e), code, sizeof code, msg, sizeof msg);
    CHECK(strcmp(code, "SignatureDoesNotMatch") == 0);
    CHECKF(strcmp(msg, "The request signature <x> does not match") == 0, "%s", msg);
    /* list URL: parameters encoded, then sorted by name */
    struct s3_cfg c = {0};
    c.endpoint = "http://127.0.0.1:9000";
    c.region = "us-east-1";
    char *u;
    CHECK(s3_list_url(&c, "bkt", "data/x y", "a/b+c=", 1000, &u, &err) == ST_OK);
    CHECKF(strcmp(u, "http://127.0.0.1:9000/bkt?continuation-token=a%2Fb%2Bc%3D&encoding-type=url"
                     "&list-type=2&max-keys=1000&prefix=data%2Fx%20y") == 0,
           "%s", u);
    st_free(u);
    CHECK(s3_object_url(&c, "bkt", "dir/a b#.jsonl", &u, &err) == ST_OK);
    CHECK(strcmp(u, "http://127.0.0.1:9000/bkt/dir/a%20b%23.jsonl") == 0);
    st_free(u);
    c.endpoint = NULL;
    c.region = "eu-west-1";
    CHECK(s3_object_url(&c, "bkt", "k", &u, &err) == ST_OK);
    CHECK(strcmp(u, "https://bkt.s3.eu-west-1.amazonaws.com/k") == 0);
    st_free(u);
    char *bucket, *key;
    CHECK(s3_split("s3://my-bucket/a/b.tar", &bucket, &key, &err) == ST_OK);
    CHECK(strcmp(bucket, "my-bucket") == 0 && strcmp(key, "a/b.tar") == 0);
    st_free(bucket);
    st_free(key);
    CHECK(s3_split("s3://B/x", &bucket, &key, &err) == ST_ERR_ARG);
    CHECKF(strstr(err.msg, "s3://B/x: bad URL") != NULL, "%s", err.msg);
}

TEST(s3_credentials) {
    char *dir = td_tmpdir("aws");
    char cred[600], conf[600];
    snprintf(cred, sizeof cred, "%s/credentials", dir);
    snprintf(conf, sizeof conf, "%s/config", dir);
    const char *ct =
        "[default]\naws_access_key_id = AKDEFAULT\naws_secret_access_key=SDEFAULT\n"
        "# comment\n[work]\naws_access_key_id=AKWORK\naws_secret_access_key = S/W+ork\n"
        "aws_session_token = TOKEN\n";
    const char *cf = "[default]\nregion = us-west-2\n[profile work]\nregion=eu-central-1\n"
                     "endpoint_url = http://127.0.0.1:1234/\n";
    td_write(cred, ct, strlen(ct));
    td_write(conf, cf, strlen(cf));
    setenv("AWS_SHARED_CREDENTIALS_FILE", cred, 1);
    setenv("AWS_CONFIG_FILE", conf, 1);
    unsetenv("AWS_ACCESS_KEY_ID");
    unsetenv("AWS_SECRET_ACCESS_KEY");
    unsetenv("AWS_SESSION_TOKEN");
    unsetenv("AWS_REGION");
    unsetenv("AWS_DEFAULT_REGION");
    unsetenv("AWS_PROFILE");
    unsetenv("AWS_ENDPOINT_URL");
    unsetenv("AWS_ENDPOINT_URL_S3");
    struct st_stream_options o;
    st_stream_options_init(&o);
    struct s3_cfg c;
    struct st_error err;
    CHECK(s3_cfg_load(&c, &o, &err) == ST_OK);
    CHECK(strcmp(c.akid, "AKDEFAULT") == 0 && strcmp(c.secret, "SDEFAULT") == 0 && !c.token);
    CHECK(strcmp(c.region, "us-west-2") == 0 && !c.endpoint && !c.anonymous);
    CHECK(strcmp(c.sigv4, "aws:amz:us-west-2:s3") == 0);
    s3_cfg_free(&c);
    setenv("AWS_PROFILE", "work", 1);
    CHECK(s3_cfg_load(&c, &o, &err) == ST_OK);
    CHECK(strcmp(c.akid, "AKWORK") == 0 && strcmp(c.secret, "S/W+ork") == 0);
    CHECK(c.token && strcmp(c.token, "TOKEN") == 0);
    CHECK(strcmp(c.region, "eu-central-1") == 0);
    CHECK(c.endpoint && strcmp(c.endpoint, "http://127.0.0.1:1234") == 0);
    s3_cfg_free(&c);
    setenv("AWS_ACCESS_KEY_ID", "AKENV", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "SENV", 1);
    setenv("AWS_REGION", "ap-south-1", 1);
    o.endpoint_url = "https://s3.example.com";
    CHECK(s3_cfg_load(&c, &o, &err) == ST_OK);
    CHECK(strcmp(c.akid, "AKENV") == 0 && strcmp(c.region, "ap-south-1") == 0);
    CHECK(strcmp(c.endpoint, "https://s3.example.com") == 0);
    s3_cfg_free(&c);
    o.endpoint_url = "ftp://x";
    CHECK(s3_cfg_load(&c, &o, &err) == ST_ERR_ARG);
    unsetenv("AWS_ACCESS_KEY_ID");
    unsetenv("AWS_SECRET_ACCESS_KEY");
    unsetenv("AWS_REGION");
    unsetenv("AWS_PROFILE");
    setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent", 1);
    o.endpoint_url = NULL;
    CHECK(s3_cfg_load(&c, &o, &err) == ST_OK);
    CHECK(c.anonymous); /* no credentials anywhere */
    s3_cfg_free(&c);
    unsetenv("AWS_SHARED_CREDENTIALS_FILE");
    unsetenv("AWS_CONFIG_FILE");
    td_rm_rf(dir);
    free(dir);
}

TEST(index_manifest) {
    struct st_shard_list l;
    struct st_error err;
    const char *m = "{\"streamtune_index\": 1, \"shards\": [{\"url\": \"a.jsonl\", \"bytes\": 10, "
                    "\"samples\": 2, \"sha256\": "
                    "\"E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855\"},"
                    "{\"url\": \"s3://b/c.tar\", \"bytes\": 0}]}";
    CHECK(index_parse(m, strlen(m), "http://h/d/index.json", &l, "idx", &err) == ST_OK);
    CHECK(l.n == 2 && strcmp(l.shards[0].url, "http://h/d/a.jsonl") == 0);
    CHECK(l.shards[0].samples == 2 && l.shards[0].size == 10 && l.shards[0].sha256[0] == 'e');
    CHECK(strcmp(l.shards[1].url, "s3://b/c.tar") == 0 && l.shards[1].samples == -1);
    st_shard_list_free(&l);
    const char *w = "{\"__kind__\": \"wids-shard-index-v1\", \"shardlist\": [{\"url\": \"x.tar\", "
                    "\"nsamples\": 5, \"filesize\": 2048}]}";
    CHECK(index_parse(w, strlen(w), "/data/i.json", &l, "idx", &err) == ST_OK);
    CHECK(l.n == 1 && strcmp(l.shards[0].url, "/data/x.tar") == 0 && l.shards[0].samples == 5);
    st_shard_list_free(&l);
    const char *bad[] = {"[]",
                         "{\"streamtune_index\": 2, \"shards\": []}",
                         "{\"streamtune_index\": 1, \"shards\": []}",
                         "{\"streamtune_index\": 1, \"shards\": [{\"url\": \"a\", \"bytes\": -1}]}",
                         "{\"streamtune_index\": 1, \"shards\": [{\"url\": \"a\", \"bytes\": 1, "
                         "\"sha256\": \"xyz\"}]}",
                         "{\"streamtune_index\": 1, \"shards\": [{\"bytes\": 1}]}",
                         "{"};
    const char *want[] = {"not an index",    "version 2",        "shards: expected",
                          "shards[0].bytes", "shards[0].sha256", "shards[0].url",
                          "not valid JSON"};
    for (int i = 0; i < 7; i++) {
        CHECK(index_parse(bad[i], strlen(bad[i]), "i.json", &l, "i.json", &err) != ST_OK);
        CHECKF(strstr(err.msg, want[i]) != NULL, "%s", err.msg);
    }
}

TEST(options) {
    struct st_stream_options o;
    st_stream_options_init(&o);
    struct st_error err;
    int known;
    CHECK(st_stream_option_set(&o, "stream-memory", "64M", &known, &err) == ST_OK && known);
    CHECK(o.memory_budget == (size_t)64 << 20);
    CHECK(st_stream_option_set(&o, "seed", "42", &known, &err) == ST_OK && o.seed == 42);
    CHECK(st_stream_option_set(&o, "no-shuffle", NULL, &known, &err) == ST_OK && !o.shuffle);
    CHECK(st_stream_option_set(&o, "shuffle-shards", "0", &known, &err) == ST_ERR_ARG);
    CHECK(st_stream_option_set(&o, "world-size", "x", &known, &err) == ST_ERR_ARG && known);
    CHECKF(strstr(err.msg, "--world-size: expected an integer") != NULL, "%s", err.msg);
    CHECK(st_stream_option_set(&o, "model", "x", &known, &err) == ST_ERR_ARG && !known);
    CHECK(st_stream_option_set(&o, "stream-memory", "lots", &known, &err) == ST_ERR_ARG);
}

/* Replay every file of dir through fn; returns the count (-1: no directory). */
static int replay(const char *dir, int (*fn)(const uint8_t *, size_t)) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char p[1024];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat sb;
        if (stat(p, &sb) != 0 || !S_ISREG(sb.st_mode)) continue;
        FILE *f = fopen(p, "rb");
        size_t len = (size_t)sb.st_size;
        uint8_t *buf = malloc(len ? len : 1); /* exactly len bytes: ASan sees over-reads */
        size_t got = len ? fread(buf, 1, len, f) : 0;
        fclose(f);
        fn(buf, got);
        free(buf);
        n++;
    }
    closedir(d);
    return n;
}

TEST(fuzz_replay) {
    static const struct {
        const char *name;
        int (*fn)(const uint8_t *, size_t);
    } t[] = {{"tar", st_fuzz_tar_one},
             {"jsonl", st_fuzz_jsonl_one},
             {"index", st_fuzz_index_one},
             {"s3_list", st_fuzz_s3_list_one}};
    for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
        char dir[600];
        snprintf(dir, sizeof dir, "%s/fuzz/corpus/%s", ST_SOURCE_DIR, t[i].name);
        int n = replay(dir, t[i].fn);
        CHECKF(n > 0, "no seeds in fuzz/corpus/%s", t[i].name);
        snprintf(dir, sizeof dir, "%s/fuzz/crashers/%s", ST_SOURCE_DIR, t[i].name);
        int k = replay(dir, t[i].fn);
        printf("     %s: %d seeds, %d crashers\n", t[i].name, n, k < 0 ? 0 : k);
    }
}

int main(void) {
    RUN(sha256_vectors);
    RUN(brace_and_sizes);
    RUN(jsonl_splitting);
    RUN(jsonl_errors);
    RUN(tar_reader);
    RUN(tar_errors);
    RUN(decompression);
    RUN(s3_xml);
    RUN(s3_credentials);
    RUN(index_manifest);
    RUN(options);
    RUN(fuzz_replay);
    return test_finish();
}
