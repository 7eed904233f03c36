/* mod_ssh_key.c - host.core.ssh: private keys checked before connecting, host key fingerprints
 * and the known_hosts policy ("accept-new", "yes", "no"). */
#include "ph_ssh.h"
#include "ph_util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define BAD_KEY "ssh: private key is not a valid OpenSSH or PEM key"

/* ---- private keys ----------------------------------------------------------------------- */

static int starts(const char *s, size_t n, const char *prefix)
{
    size_t p = strlen(prefix);
    return n >= p && memcmp(s, prefix, p) == 0;
}

static const char *find(const char *s, size_t n, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; k <= n && i <= n - k; i++)
        if (memcmp(s + i, needle, k) == 0)
            return s + i;
    return NULL;
}

/* A big-endian SSH "string" at *p: advances *p, returns 0 or -1 when it overruns end. */
static int ssh_string(const unsigned char **p, const unsigned char *end, const unsigned char **s,
                      uint32_t *len)
{
    if (end - *p < 4)
        return -1;
    uint32_t n = ((uint32_t)(*p)[0] << 24) | ((uint32_t)(*p)[1] << 16) | ((uint32_t)(*p)[2] << 8) |
                 (uint32_t)(*p)[3];
    *p += 4;
    if ((size_t)(end - *p) < n)
        return -1;
    *s = *p;
    *len = n;
    *p += n;
    return 0;
}

static int eq(const unsigned char *s, uint32_t n, const char *lit)
{
    return n == strlen(lit) && memcmp(s, lit, n) == 0;
}

/* openssh-key-v1 (PROTOCOL.key): magic, cipher, kdf, kdf options, key count, public key,
 * private section. Unencrypted private sections open with two equal check words. */
static int check_openssh(const unsigned char *d, size_t n, int has_pass, SshKeyInfo *info,
                         const char **msg)
{
    static const char magic[] = "openssh-key-v1";
    const unsigned char *p = d, *end = d + n, *s, *blob, *priv;
    uint32_t len, bloblen, privlen, nkeys;
    if (n < sizeof magic || memcmp(d, magic, sizeof magic) != 0)
        goto bad;
    p += sizeof magic;
    if (ssh_string(&p, end, &s, &len) != 0) /* cipher */
        goto bad;
    info->encrypted = !eq(s, len, "none");
    if (ssh_string(&p, end, &s, &len) != 0 || ssh_string(&p, end, &s, &len) != 0 || end - p < 4)
        goto bad;
    nkeys = ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
    p += 4;
    if (nkeys != 1 || ssh_string(&p, end, &blob, &bloblen) != 0 ||
        ssh_string(&p, end, &priv, &privlen) != 0)
        goto bad;
    const unsigned char *b = blob;
    if (ssh_string(&b, blob + bloblen, &s, &len) != 0 || len == 0 || len >= sizeof info->type)
        goto bad;
    memcpy(info->type, s, len);
    info->type[len] = '\0';
    if (starts(info->type, len, "sk-")) {
        *msg = "ssh: security-key (sk-) private keys need a hardware token and are not supported";
        return -1;
    }
    if (!eq(s, len, "ssh-ed25519") && !eq(s, len, "ssh-rsa") &&
        !starts(info->type, len, "ecdsa-sha2-nistp")) {
        *msg = "ssh: private key type is not supported (use ed25519, ECDSA or RSA)";
        return -1;
    }
    info->rsa = eq(s, len, "ssh-rsa");
    if (!info->encrypted && (privlen < 8 || memcmp(priv, priv + 4, 4) != 0))
        goto bad; /* the check words differ: damaged */
    if (info->encrypted && !has_pass) {
        *msg = "ssh: private key is encrypted; give a passphrase";
        return -1;
    }
    return 0;
bad:
    *msg = BAD_KEY " (damaged openssh-key-v1 data)";
    return -1;
}

/* The armor of a private key: "-----BEGIN <label>-----", the body, "-----END <label>-----". */
typedef struct {
    const char *label; /* "OPENSSH PRIVATE KEY", "RSA PRIVATE KEY" ... (not terminated) */
    size_t lablen;
    const char *body, *stop; /* between the BEGIN and the END lines */
    int openssh;             /* openssh-key-v1 inside */
    int pem;                 /* PKCS#1, SEC1 or PKCS#8 DER inside */
    int pkcs8enc;            /* PKCS#8, encrypted */
} Armor;

/* Find the armor, refusing what is no private key with a message saying what it is. */
static int find_armor(const char *text, size_t len, Armor *a, const char **msg)
{
    if (starts(text, len, "PuTTY-User-Key-File-")) {
        *msg = BAD_KEY " (it is a PuTTY .ppk file: export it from PuTTYgen as OpenSSH)";
        return -1;
    }
    if (starts(text, len, "ssh-") || starts(text, len, "ecdsa-sha2-") || starts(text, len, "sk-")) {
        *msg = BAD_KEY " (it is a PUBLIC key: give the file without .pub)";
        return -1;
    }
    const char *dash = NULL;
    if (starts(text, len, "-----BEGIN ")) {
        a->label = text + 11;
        dash = find(a->label, len - 11, "-----");
    }
    if (dash == NULL || dash - a->label > 40) {
        *msg = BAD_KEY " (no -----BEGIN ... PRIVATE KEY----- line)";
        return -1;
    }
    a->lablen = (size_t)(dash - a->label);
    char endline[64];
    snprintf(endline, sizeof endline, "-----END %.*s-----", (int)a->lablen, a->label);
    a->body = dash + 5;
    a->stop = find(a->body, len - (size_t)(a->body - text), endline);
    if (a->stop == NULL) {
        *msg = BAD_KEY " (its END line is missing: truncated?)";
        return -1;
    }
    const char *l = a->label;
    size_t n = a->lablen;
    a->openssh = n == 19 && memcmp(l, "OPENSSH PRIVATE KEY", 19) == 0;
    a->pkcs8enc = n == 21 && memcmp(l, "ENCRYPTED PRIVATE KEY", 21) == 0;
    a->pem = (n == 15 && memcmp(l, "RSA PRIVATE KEY", 15) == 0) ||
             (n == 14 && memcmp(l, "EC PRIVATE KEY", 14) == 0) ||
             (n == 11 && memcmp(l, "PRIVATE KEY", 11) == 0) || a->pkcs8enc;
    if (!a->openssh && !a->pem) {
        *msg = BAD_KEY " (unsupported BEGIN label)";
        return -1;
    }
    return 0;
}

/* Where the base64 starts: PEM headers ("Proc-Type: 4,ENCRYPTED") come before a blank line.
 * NULL (with *msg) when they are damaged. */
static const char *skip_pem_headers(const Armor *a, SshKeyInfo *info, const char **msg)
{
    size_t n = (size_t)(a->stop - a->body);
    if (!a->pem || find(a->body, n, ":") == NULL)
        return a->body;
    const char *hdr_end = find(a->body, n, "\n\n");
    const char *hdr_end2 = find(a->body, n, "\r\n\r\n");
    if (hdr_end == NULL || (hdr_end2 != NULL && hdr_end2 < hdr_end))
        hdr_end = hdr_end2;
    if (hdr_end == NULL) {
        *msg = BAD_KEY " (damaged PEM headers)";
        return NULL;
    }
    info->encrypted = find(a->body, (size_t)(hdr_end - a->body), "ENCRYPTED") != NULL;
    return hdr_end;
}

/* PKCS#1, SEC1 or PKCS#8 DER: a SEQUENCE, unless encrypted (then a passphrase is needed). */
static int check_der(const Armor *a, const unsigned char *der, size_t dlen, int has_pass,
                     SshKeyInfo *info, const char **msg)
{
    int rc = 0;
    if (a->pkcs8enc)
        info->encrypted = 1;
    if (!info->encrypted && (dlen < 2 || der[0] != 0x30)) { /* DER opens with a SEQUENCE */
        *msg = BAD_KEY " (damaged DER data)";
        rc = -1;
    } else if (info->encrypted && !has_pass) {
        *msg = "ssh: private key is encrypted; give a passphrase";
        rc = -1;
    }
    const char *t = a->label[0] == 'R'                         ? "rsa"
                    : a->label[0] == 'E' && a->label[1] == 'C' ? "ec"
                                                               : "pkcs8";
    snprintf(info->type, sizeof info->type, "%s", t);
    info->rsa = a->label[0] == 'R';
    return rc;
}

int ph_ssh_key_check(const char *text, size_t len, int has_pass, SshKeyInfo *info, const char **msg)
{
    memset(info, 0, sizeof *info);
    while (len > 0 && (*text == ' ' || *text == '\t' || *text == '\r' || *text == '\n')) {
        text++;
        len--;
    }
    Armor a;
    if (find_armor(text, len, &a, msg) != 0)
        return -1;
    const char *b64 = skip_pem_headers(&a, info, msg);
    if (b64 == NULL)
        return -1;
    size_t n = (size_t)(a.stop - b64), m = 0;
    char *clean = malloc(n + 1);
    unsigned char *der = malloc(ph_base64_decoded_max(n) + 1);
    if (clean == NULL || der == NULL) {
        free(clean);
        free(der);
        *msg = "ssh: out of memory checking the private key";
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        if (b64[i] != ' ' && b64[i] != '\t' && b64[i] != '\r' && b64[i] != '\n')
            clean[m++] = b64[i];
    size_t dlen = 0;
    int rc;
    if (m == 0 || ph_base64_decode(clean, m, der, &dlen) != 0) {
        *msg = m == 0 ? BAD_KEY " (nothing between its BEGIN and END lines)"
                      : BAD_KEY " (bad base64 between its BEGIN and END lines)";
        rc = -1;
    } else if (a.openssh) {
        rc = check_openssh(der, dlen, has_pass, info, msg);
    } else {
        rc = check_der(&a, der, dlen, has_pass, info, msg);
    }
    explicit_bzero(clean, n + 1);
    explicit_bzero(der, dlen);
    free(clean);
    free(der);
    return rc;
}

/* ---- host keys -------------------------------------------------------------------------- */

void ph_ssh_fingerprint(const char *blob, size_t len, char *out)
{
    unsigned char sum[PH_SHA256_LEN];
    char b64[48];
    ph_sha256(blob, len, sum);
    size_t n = ph_base64_encode(sum, sizeof sum, b64);
    while (n > 0 && b64[n - 1] == '=')
        n--;
    snprintf(out, 64, "SHA256:%.*s", (int)n, b64);
}

static const struct {
    int hostkey;  /* LIBSSH2_HOSTKEY_TYPE_* */
    int knownkey; /* LIBSSH2_KNOWNHOST_KEY_* */
    const char *method;
} key_types[] = {
    { LIBSSH2_HOSTKEY_TYPE_ED25519, LIBSSH2_KNOWNHOST_KEY_ED25519, "ssh-ed25519" },
    { LIBSSH2_HOSTKEY_TYPE_ECDSA_256, LIBSSH2_KNOWNHOST_KEY_ECDSA_256, "ecdsa-sha2-nistp256" },
    { LIBSSH2_HOSTKEY_TYPE_ECDSA_384, LIBSSH2_KNOWNHOST_KEY_ECDSA_384, "ecdsa-sha2-nistp384" },
    { LIBSSH2_HOSTKEY_TYPE_ECDSA_521, LIBSSH2_KNOWNHOST_KEY_ECDSA_521, "ecdsa-sha2-nistp521" },
    { LIBSSH2_HOSTKEY_TYPE_RSA, LIBSSH2_KNOWNHOST_KEY_SSHRSA, "ssh-rsa" },
    { LIBSSH2_HOSTKEY_TYPE_DSS, LIBSSH2_KNOWNHOST_KEY_SSHDSS, "ssh-dss" },
};
#define NKEY_TYPES (sizeof key_types / sizeof key_types[0])

/* known_hosts names a host as "host" on port 22 and "[host]:port" elsewhere (OpenSSH). */
static void host_pattern(const SshTarget *t, char *out, size_t n)
{
    if (t->port == 22)
        snprintf(out, n, "%s", t->host);
    else
        snprintf(out, n, "[%s]:%d", t->host, t->port);
}

/* Read known_hosts line by line: a line libssh2 cannot parse (a certificate authority, a key
 * type it does not know) is skipped instead of dropping the whole file. A missing file is
 * empty. -1 with errno when it exists but cannot be read. */
static int read_known(LIBSSH2_KNOWNHOSTS *kh, const char *path)
{
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return errno == ENOENT ? 0 : -1;
    char line[16384];
    while (fgets(line, sizeof line, f) != NULL) {
        size_t n = strlen(line);
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            line[--n] = '\0';
        if (n > 0)
            libssh2_knownhost_readline(kh, line, n, LIBSSH2_KNOWNHOST_FILE_OPENSSH);
    }
    fclose(f);
    return 0;
}

/* Bit i set: known_hosts has a key of key_types[i] for this host. */
static unsigned known_types(LIBSSH2_KNOWNHOSTS *kh, const SshTarget *t)
{
    char pat[1100];
    unsigned mask = 0;
    host_pattern(t, pat, sizeof pat);
    for (size_t i = 0; i < NKEY_TYPES; i++) {
        /* A dummy key of that type: a MISMATCH means a real one of that type is there. */
        int rc = libssh2_knownhost_checkp(kh, pat, -1, "\0", 1,
                                          LIBSSH2_KNOWNHOST_TYPE_PLAIN |
                                              LIBSSH2_KNOWNHOST_KEYENC_RAW | key_types[i].knownkey,
                                          NULL);
        if (rc == LIBSSH2_KNOWNHOST_CHECK_MISMATCH)
            mask |= 1u << i;
    }
    return mask;
}

void ph_ssh_hostkey_prefs(LIBSSH2_SESSION *ssh, const SshTarget *t)
{
    if (t->policy == SSH_POLICY_NO || t->known_hosts == NULL)
        return;
    LIBSSH2_KNOWNHOSTS *kh = libssh2_knownhost_init(ssh);
    if (kh == NULL)
        return;
    unsigned mask = read_known(kh, t->known_hosts) == 0 ? known_types(kh, t) : 0;
    libssh2_knownhost_free(kh);
    if (mask == 0)
        return;
    const char **algs = NULL;
    int n = libssh2_session_supported_algs(ssh, LIBSSH2_METHOD_HOSTKEY, &algs);
    if (n <= 0)
        return;
    char prefs[1024] = "";
    size_t used = 0;
    for (int pass = 0; pass < 2; pass++) { /* known types first, in libssh2's order */
        for (int a = 0; a < n; a++) {
            int known = 0;
            for (size_t i = 0; i < NKEY_TYPES; i++)
                if ((mask & (1u << i)) && strcmp(algs[a], key_types[i].method) == 0)
                    known = 1;
            if (known != (pass == 0))
                continue;
            int w = snprintf(prefs + used, sizeof prefs - used, "%s%s", used ? "," : "", algs[a]);
            if (w > 0 && (size_t)w < sizeof prefs - used)
                used += (size_t)w;
        }
    }
    libssh2_free(ssh, algs);
    libssh2_session_method_pref(ssh, LIBSSH2_METHOD_HOSTKEY, prefs);
}

/* Append one line for the accepted key; the file is created 0600. */
static int append_known(LIBSSH2_KNOWNHOSTS *kh, const SshTarget *t, const char *key, size_t len,
                        int knownkey)
{
    char pat[1100];
    host_pattern(t, pat, sizeof pat);
    struct libssh2_knownhost *entry = NULL;
    static const char comment[] = "added by provider-host";
    if (libssh2_knownhost_addc(
            kh, pat, NULL, key, len, comment, sizeof comment - 1,
            LIBSSH2_KNOWNHOST_TYPE_PLAIN | LIBSSH2_KNOWNHOST_KEYENC_RAW | knownkey, &entry) != 0)
        return EINVAL;
    char line[8192];
    size_t n = 0;
    if (libssh2_knownhost_writeline(kh, entry, line, sizeof line, &n,
                                    LIBSSH2_KNOWNHOST_FILE_OPENSSH) != 0)
        return EINVAL;
    int fd = open(t->known_hosts, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return errno;
    int err = 0;
    for (size_t off = 0; off < n;) {
        ssize_t w = write(fd, line + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            err = w < 0 ? errno : EIO;
            break;
        }
        off += (size_t)w;
    }
    if (close(fd) != 0 && err == 0)
        err = errno;
    return err;
}

/* The host key against known_hosts (read into kh), as the policy says: a match is accepted,
 * a different key refused, an unknown host added ("accept-new") or refused ("yes"). */
static int check_known(LIBSSH2_KNOWNHOSTS *kh, SshSession *s, const char *key, size_t len,
                       int knownkey, const char **code, char **msg)
{
    const SshTarget *t = &s->t;
    char pat[1100];
    host_pattern(t, pat, sizeof pat);
    int rc = libssh2_knownhost_checkp(
        kh, pat, -1, key, len,
        LIBSSH2_KNOWNHOST_TYPE_PLAIN | LIBSSH2_KNOWNHOST_KEYENC_RAW | knownkey, NULL);
    int result = 0;
    if (rc == LIBSSH2_KNOWNHOST_CHECK_MATCH) {
        result = 0;
    } else if (rc == LIBSSH2_KNOWNHOST_CHECK_MISMATCH || known_types(kh, t) != 0) {
        /* a different key, or only keys of types the server no longer offers */
        *code = "protocol";
        *msg = ph_printf_alloc(
            "ssh: host key for %s:%d changed (fingerprint %s); it does not match %s. If the host "
            "was rebuilt on purpose, remove its line from that file",
            t->host, t->port, s->fingerprint, t->known_hosts);
        result = -1;
    } else if (rc == LIBSSH2_KNOWNHOST_CHECK_NOTFOUND && t->policy == SSH_POLICY_ACCEPT_NEW) {
        int err = append_known(kh, t, key, len, knownkey);
        if (err != 0) {
            *code = "io";
            *msg = ph_printf_alloc("ssh: cannot add %s:%d to known_hosts %s: %s", t->host, t->port,
                                   t->known_hosts, strerror(err));
            result = -1;
        }
    } else if (rc == LIBSSH2_KNOWNHOST_CHECK_NOTFOUND) {
        *code = "protocol";
        *msg = ph_printf_alloc("ssh: host key for %s:%d (fingerprint %s) is not in %s, and "
                               "host_key_policy \"yes\" accepts only known hosts",
                               t->host, t->port, s->fingerprint, t->known_hosts);
        result = -1;
    } else {
        *code = "protocol";
        *msg = ph_printf_alloc("ssh: cannot check the host key of %s:%d against %s", t->host,
                               t->port, t->known_hosts);
        result = -1;
    }
    return result;
}

int ph_ssh_hostkey_verify(SshSession *s, const char **code, char **msg)
{
    const SshTarget *t = &s->t;
    size_t len = 0;
    int type = 0;
    const char *key = libssh2_session_hostkey(s->ssh, &len, &type);
    if (key == NULL) {
        *code = "protocol";
        *msg = ph_printf_alloc("ssh: %s:%d sent no host key", t->host, t->port);
        return -1;
    }
    ph_ssh_fingerprint(key, len, s->fingerprint);
    if (t->policy == SSH_POLICY_NO) {
        ph_ssh_warn("ssh: host key checking is off (host_key_policy \"no\"): accepting %s:%d "
                    "with key %s unverified",
                    t->host, t->port, s->fingerprint);
        return 0;
    }
    int knownkey = 0;
    for (size_t i = 0; i < NKEY_TYPES; i++)
        if (key_types[i].hostkey == type)
            knownkey = key_types[i].knownkey;
    if (knownkey == 0) {
        *code = "protocol";
        *msg = ph_printf_alloc("ssh: %s:%d sent a host key of an unknown type", t->host, t->port);
        return -1;
    }
    LIBSSH2_KNOWNHOSTS *kh = libssh2_knownhost_init(s->ssh);
    if (kh == NULL || read_known(kh, t->known_hosts) != 0) {
        int err = errno;
        if (kh != NULL)
            libssh2_knownhost_free(kh);
        *code = "io";
        *msg =
            ph_printf_alloc("ssh: cannot read known_hosts %s: %s", t->known_hosts, strerror(err));
        return -1;
    }
    int result = check_known(kh, s, key, len, knownkey, code, msg);
    libssh2_knownhost_free(kh);
    return result;
}
