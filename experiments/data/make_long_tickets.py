"""Make the long-ticket example data from ticket_urgency.jsonl.

    python experiments/data/make_long_tickets.py

writes experiments/data/long_tickets_train.csv (420 rows) and
experiments/data/long_tickets_test.jsonl (150 rows). Standard library only, no network, and
deterministic: the same SEED gives byte-identical files.

Each long ticket is one source ticket, drawn without replacement (train and test never share a
source ticket), stratified by urgency. Its body starts with the source ticket text, which holds
everything that decides the label, and continues with material a help desk really receives but
which says nothing about urgency: environment details, steps already tried, log excerpts, stack
traces, request headers, network diagnostics, config snippets, attachment lists, e-mail
signatures, legal disclaimers and earlier quoted messages. That material comes from a random
generator seeded with the row's new id, never with its label, and is checked to contain no label
word and no "urgent"/"urgency".
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import random
import re
import textwrap
from pathlib import Path

SEED = 20240611
HERE = Path(__file__).resolve().parent
SOURCE = HERE / "ticket_urgency.jsonl"
TRAIN_OUT = HERE / "long_tickets_train.csv"
TEST_OUT = HERE / "long_tickets_test.jsonl"
N_TRAIN, N_TEST = 420, 150
LABELS = ["Critical", "High", "Medium", "Low"]
FIELDS = ["id", "subject", "body", "product", "urgency"]
MIN_BODY, MAX_BODY = 1500, 9000

# Words the label-neutral filler must never contain (checked case-insensitively).
FORBIDDEN = re.compile(
    r"\b(critical|high|medium|low)\b|urgen|priorit|severity|emergenc|asap|immediate|escalat|outage|\bsla\b",
    re.IGNORECASE,
)
LABEL_WORD = re.compile(r"\b(critical|high|medium|low)\b", re.IGNORECASE)


# --------------------------------------------------------------------------------------------
# Snippet pools
# --------------------------------------------------------------------------------------------

FIRST_NAMES = [
    "Aisha",
    "Ben",
    "Carla",
    "Daniel",
    "Elif",
    "Farid",
    "Greta",
    "Hiro",
    "Ines",
    "Jonas",
    "Kavya",
    "Liam",
    "Mei",
    "Nikolai",
    "Olu",
    "Paula",
    "Quentin",
    "Rosa",
    "Sanjay",
    "Tamsin",
    "Ugo",
    "Vera",
    "Wiktor",
    "Ximena",
    "Yusuf",
    "Zoe",
    "Amara",
    "Bruno",
    "Chloe",
    "Dmitri",
    "Esther",
    "Felix",
    "Hannah",
    "Idris",
    "Julia",
    "Kwame",
    "Lena",
    "Mateo",
    "Nadia",
    "Oskar",
    "Priya",
    "Rahul",
]
LAST_NAMES = [
    "Okafor",
    "Lindqvist",
    "Moreau",
    "Tanaka",
    "Fischer",
    "Haddad",
    "Kowalski",
    "Novak",
    "Silva",
    "O'Brien",
    "Rossi",
    "Nguyen",
    "Schmidt",
    "Petrova",
    "Mensah",
    "Jansen",
    "Garcia",
    "Patel",
    "Hughes",
    "Andersen",
    "Yilmaz",
    "Dubois",
    "Kim",
    "MacLeod",
    "Costa",
    "Weber",
    "Ivanova",
    "Achterberg",
    "Brennan",
    "Castillo",
    "Demir",
    "Eriksen",
    "Ferrari",
    "Gupta",
    "Horvath",
]
TITLES = [
    "IT Coordinator",
    "Office Manager",
    "Systems Administrator",
    "Operations Lead",
    "Service Desk Analyst",
    "Finance Assistant",
    "Practice Manager",
    "Head of Digital",
    "E-commerce Manager",
    "Platform Engineer",
    "Customer Success Specialist",
    "Team Assistant",
    "Store Manager",
    "Senior Developer",
    "Workplace Services",
    "Procurement Officer",
    "DevOps Engineer",
    "Marketing Coordinator",
    "HR Business Partner",
    "Logistics Planner",
    "Account Manager",
    "Data Analyst",
    "Facilities Coordinator",
    "Clinic Administrator",
]
COMPANIES = [
    ("Harbourline Logistics Ltd", "harbourline.example", "Unit 4, Quayside Park", "Bristol BS1 6XN", "+44 117"),
    ("Kestrel Foods GmbH", "kestrel-foods.example", "Industriestraße 22", "70565 Stuttgart", "+49 711"),
    (
        "Northgate Dental Group",
        "northgatedental.example",
        "118 Northgate Ave, Suite 300",
        "Columbus, OH 43201",
        "+1 614",
    ),
    ("Vellum & Reed Publishing", "vellumreed.example", "22 Charterhouse Row", "London EC1M 6AH", "+44 20"),
    ("Blue Alder Hotels", "bluealder-hotels.example", "Carrer de Balmes 140", "08008 Barcelona", "+34 93"),
    ("Tidewater Credit Union", "tidewatercu.example", "900 Harbor Blvd", "Norfolk, VA 23510", "+1 757"),
    ("Maple & Finch Retail", "maplefinch.example", "455 Rue Sainte-Catherine O", "Montréal QC H3B 1A7", "+1 514"),
    (
        "Sundara Health Clinics",
        "sundarahealth.example",
        "3rd Floor, Prestige Tower, MG Road",
        "Bengaluru 560001",
        "+91 80",
    ),
    ("Ostara Engineering BV", "ostara-eng.example", "Stationsplein 12", "3511 ED Utrecht", "+31 30"),
    ("Copperleaf Insurance Brokers", "copperleaf-ib.example", "7 Wharf Street", "Auckland 1010", "+64 9"),
    ("Granite Peak Outfitters", "granitepeak.example", "2100 Canyon Road", "Boulder, CO 80302", "+1 303"),
    ("Lumen Learning Trust", "lumentrust.example", "Carlton House, 5 Mill Lane", "Leeds LS11 5DX", "+44 113"),
    ("Asterion Software AB", "asterion.example", "Kungsgatan 48", "111 35 Stockholm", "+46 8"),
    ("Pampas Cold Chain SA", "pampascold.example", "Av. Corrientes 1234, Piso 8", "C1043 Buenos Aires", "+54 11"),
    ("Riverbend Veterinary", "riverbendvets.example", "14 Flinders Lane", "Melbourne VIC 3000", "+61 3"),
    ("Quillon Legal LLP", "quillonlegal.example", "1 Temple Court", "Dublin D02 X285", "+353 1"),
    ("Halvard Marine AS", "halvardmarine.example", "Strandkaien 8", "5013 Bergen", "+47 55"),
    (
        "Cedarwood Property Management",
        "cedarwoodpm.example",
        "55 Market Street, Floor 2",
        "San Francisco, CA 94105",
        "+1 415",
    ),
    ("Novaterra Agritech", "novaterra.example", "17 Rue de la République", "69002 Lyon", "+33 4"),
    ("Brightwell Accountants", "brightwell.example", "Block C, Waterfront Park", "Cape Town 8001", "+27 21"),
]
SUPPORT_DESKS = [
    ("Support Team", "support@{vendor}"),
    ("Customer Care", "care@{vendor}"),
    ("Service Desk", "servicedesk@{vendor}"),
    ("Help Centre", "help@{vendor}"),
    ("Technical Support", "techsupport@{vendor}"),
    ("IT Helpdesk", "helpdesk@{vendor}"),
]
VENDOR_DOMAINS = ["vendor-support.example", "helpdesk.example.net", "it.internal", "support.example.io", "desk.example.org"]

LEADINS = [
    "More details below.",
    "I've added everything I could find below.",
    "Details from our side are below, let me know if anything else is needed.",
    "Please see the information below.",
    "Below is what our IT person collected.",
    "Adding some technical details in case they help.",
    "Pasting the environment info and logs your KB article asks for.",
    "Info below as per your support checklist.",
    "(Details below - sorry, it's a long one.)",
    "Some context and what we've tried so far:",
    "I'm replying on the existing thread so the history is all in one place.",
    "Our internal team pulled the following together.",
    "Technical bits are further down.",
    "I wasn't sure what you need, so I've included quite a lot.",
    "See the notes and log excerpt below.",
    "Copying in the details from our internal ticket.",
    "Everything we know so far is below.",
    "Thanks in advance. Details below the line.",
]

STEPS = [
    "Cleared the browser cache and cookies",
    "Signed out and back in",
    "Restarted the computer",
    "Tried a private/incognito window",
    "Disabled all browser extensions",
    "Checked your status page at the time",
    "Updated the app to the current version from the store",
    "Reinstalled the desktop client",
    "Flushed DNS (ipconfig /flushdns)",
    "Ran the built-in network troubleshooter",
    "Checked the firewall log for blocked requests",
    "Power-cycled the router and the switch",
    "Synced the system clock with time.windows.com",
    "Re-entered the API key in the settings page",
    "Rotated the client secret and updated the config",
    "Checked free disk space on the server (about 60% used)",
    "Restarted the service (systemctl restart app)",
    "Compared the settings with a colleague's account",
    "Removed and re-added the account in the app",
    "Went through KB article {kb}",
    "Switched from Wi-Fi to a wired connection",
    "Checked that the licence is still assigned in the admin portal",
    "Re-ran the job by hand",
    "Cleared the local app cache folder (%LOCALAPPDATA%\\App\\Cache)",
    "Updated the graphics driver",
    "Checked Windows Update history for recent patches",
    "Looked through the admin audit log for recent changes",
    "Re-registered the MFA device",
    "Tried from a different network (phone hotspot)",
    "Checked the certificate chain with openssl s_client",
    "Rolled the plugin back to the previous version",
    "Re-imported the last config backup",
    "Checked the time zone settings on the device",
    "Toggled the feature flag off and on again",
    "Exported a HAR file (attached)",
    "Rebooted the printer / terminal",
    "Checked the DNS records with nslookup",
    "Ran sfc /scannow",
    "Asked a colleague to try the same steps on their machine",
]
STEP_SUFFIXES = [
    "",
    "",
    "",
    " - no change",
    " (no difference as far as I can tell)",
    " - same behaviour",
    " - didn't seem to matter",
    " (done twice)",
    " - nothing new in the output",
]
STEP_HEADERS = [
    "What we've tried so far:",
    "Steps already taken:",
    "Troubleshooting done before writing:",
    "Already tried (per your FAQ):",
    "Things I checked:",
    "Done so far:",
    "Tried:",
]

OS_VALUES = [
    "Windows 11 Pro 23H2 (build 22631.{n4})",
    "Windows 10 Enterprise 22H2 (build 19045.{n4})",
    "macOS Sonoma 14.{d}",
    "macOS Ventura 13.{d}.1",
    "Ubuntu 22.04.{d} LTS",
    "Ubuntu 24.04 LTS",
    "Debian 12.{d}",
    "RHEL 9.{d}",
    "iOS 17.{d}.1",
    "Android 14 (One UI 6.1)",
    "ChromeOS 12{d}.0",
    "Windows Server 2022 (21H2)",
    "Windows Server 2019 Datacenter",
]
BROWSERS = [
    "Chrome 12{d}.0.{n4}.{n2}",
    "Firefox 12{d}.0.{d}",
    "Edge 12{d}.0.{n4}.{n2}",
    "Safari 17.{d}",
    "Firefox ESR 115.{n2}.0",
    "Brave 1.6{d}.{n2}",
    "Opera 11{d}.0.{n4}.{n2}",
    "Samsung Internet 2{d}.0",
]
ENV_KEYS = [
    ("OS", lambda r: fill(r, r.choice(OS_VALUES))),
    ("Browser", lambda r: fill(r, r.choice(BROWSERS))),
    (
        "App version",
        lambda r: f"{r.randint(2, 9)}.{r.randint(0, 30)}.{r.randint(0, 12)} (build {r.randint(1000, 9999)})",
    ),
    ("Client build", lambda r: f"{r.randint(20, 25)}.{r.randint(1, 12):02d}.{r.randint(1, 28):02d}-{hexid(r, 7)}"),
    (
        "Server",
        lambda r: r.choice(
            [
                "on-prem, 2 nodes",
                "cloud (EU-West)",
                "cloud (US-East)",
                "hosted by you",
                "VM on Hyper-V",
                f"Kubernetes 1.2{r.randint(6, 9)}",
            ]
        ),
    ),
    (
        "Database",
        lambda r: r.choice(
            ["PostgreSQL 15.{d}", "SQL Server 2019 CU2{d}", "MySQL 8.0.3{d}", "Oracle 19c", "MariaDB 10.11.{d}"]
        ).format(d=r.randint(1, 9)),
    ),
    (
        "Region / data centre",
        lambda r: r.choice(
            ["eu-west-1", "eu-central-1", "us-east-2", "ap-southeast-2", "uk-south", "ca-central-1", "Frankfurt DC2"]
        ),
    ),
    ("Tenant ID", lambda r: uuid(r)),
    ("Account ID", lambda r: f"{r.randint(100000, 999999)}"),
    (
        "Plan",
        lambda r: r.choice(["Business", "Enterprise", "Team", "Pro (annual)", "Standard", "Starter", "Education"]),
    ),
    (
        "Network",
        lambda r: r.choice(
            [
                "office LAN, 1 Gbit",
                "home broadband + VPN",
                "4G hotspot",
                "guest Wi-Fi",
                "site-to-site VPN",
                "SD-WAN branch link",
            ]
        ),
    ),
    (
        "Proxy",
        lambda r: r.choice(
            ["none", "Zscaler", f"Squid 5.{r.randint(1, 9)} (transparent)", "corporate PAC file", "Netskope client"]
        ),
    ),
    (
        "Device",
        lambda r: r.choice(
            [
                "Dell Latitude 54{d}0",
                "Lenovo ThinkPad T14 Gen {d}",
                "HP EliteBook 84{d} G9",
                "MacBook Air M{d}",
                "iPhone 1{d}",
                "Samsung Galaxy S2{d}",
                "Surface Pro {d}",
                "Zebra TC5{d} scanner",
            ]
        ).format(d=r.randint(1, 5)),
    ),
    (
        "Screen",
        lambda r: r.choice(
            ["1920x1080 @100%", "2560x1440 @125%", "3840x2160 @150%", "1366x768", "dual monitor, 1920x1200"]
        ),
    ),
    ("Locale", lambda r: r.choice(["en-GB", "en-US", "de-DE", "fr-FR", "nl-NL", "es-ES", "pt-BR", "sv-SE", "en-IN"])),
    (
        "Time zone",
        lambda r: r.choice(
            [
                "UTC",
                "Europe/London",
                "Europe/Berlin",
                "America/New_York",
                "America/Chicago",
                "Asia/Kolkata",
                "Australia/Sydney",
            ]
        ),
    ),
    (
        "Java",
        lambda r: r.choice(["OpenJDK 17.0.{n2}", "Temurin 21.0.{d}", "Oracle JRE 1.8.0_3{n2}"]).format(
            n2=r.randint(1, 12), d=r.randint(1, 4)
        ),
    ),
    (".NET runtime", lambda r: f"{r.choice(['6.0', '8.0', '4.8'])}.{r.randint(1, 30)}"),
    ("Python", lambda r: f"3.{r.randint(8, 12)}.{r.randint(0, 14)}"),
    ("Node.js", lambda r: f"v{r.choice([18, 20, 22])}.{r.randint(0, 19)}.{r.randint(0, 9)}"),
    ("Users on the account", lambda r: str(r.randint(3, 4000))),
    (
        "Installed via",
        lambda r: r.choice(
            ["MSI package", "Intune", "Jamf", "App Store", "Play Store", "Homebrew", "apt repository", "Docker image"]
        ),
    ),
]
ENV_HEADERS = [
    "Environment:",
    "System info (copied from the About dialog):",
    "== Environment ==",
    "Setup:",
    "Our setup:",
    "Tech details",
    "Version info:",
    "Configuration:",
]

ATTACH_NAMES = [
    "screenshot-{date}-{n4}.png",
    "Screen Recording {date} at {hh}.{mm}.mov",
    "har_export_{n4}.har",
    "app-log-{date}.zip",
    "error.png",
    "IMG_{n4}.jpg",
    "diagnostics_{hex}.tar.gz",
    "event-viewer-export.evtx",
    "console-output.txt",
    "network-trace.pcapng",
    "config-backup-{date}.json",
    "support-bundle-{hex}.zip",
    "Untitled.png",
    "image001.png",
    "crash-report-{n4}.ips",
    "invoice-sample.pdf",
]

# Log messages, each with the level it is logged at: "I" info/debug, "W" warn, "E" error/warn.
LOG_MESSAGES = [
    "I|GET {path} 200 {ms}ms",
    "I|POST {path} 201 {ms}ms",
    "I|PUT {path} 204 {ms}ms",
    "W|GET {path} {code4} {ms}ms",
    "E|POST {path} {code5} {ms}ms",
    "I|connection pool stats active={n2} idle={d} waiting=0",
    "W|retrying request (attempt {a}/5) after {ms}ms",
    "I|TLS handshake completed with {host} (TLSv1.3, TLS_AES_256_GCM_SHA384)",
    "I|cache miss for key {hex}",
    "W|slow query took {ms4}ms: SELECT * FROM {table} WHERE id = ?",
    "I|scheduled job {job} started",
    "I|scheduled job {job} finished in {ms4}ms",
    "I|user {user} authenticated via SAML",
    "I|session {hex} refreshed, expires in 3600s",
    "I|received webhook event {event} id={hex}",
    "I|upstream {host} responded 200 in {ms}ms",
    "E|upstream {host} responded {code5} in {ms}ms",
    "I|worker {d} heartbeat ok",
    "I|loaded {n3} records from {table}",
    "I|config reloaded from /etc/app/app.yaml",
    "E|token validation failed: signature mismatch (kid={hex})",
    "W|socket closed by peer {ip}:{port}",
    "I|DNS lookup for {host} took {ms}ms",
    "I|queue depth {n3}, consumers {d}",
    "I|GC pause {ms}ms (young gen)",
    "I|writing batch of {n2} items to {table}",
    "W|rate limiter: {n2} requests in window for client {hex}",
    "W|certificate for {host} expires in {n2} days",
    "I|sync cursor advanced to {n6}",
    "W|HTTP 429 from {host}, backing off {d}s",
    "I|file {file} uploaded ({n3} KB)",
    "I|feature flag {flag}=on for tenant {n6}",
    "I|message {hex} acknowledged",
    "I|health check /healthz returned 200",
    "E|java.net.SocketTimeoutException: Read timed out (host={host})",
    "E|unexpected EOF while reading response body",
    "W|deadlock detected, transaction {n6} rolled back and retried",
    "I|printer spooler job {n3} queued",
    "I|SMTP 250 2.0.0 OK queued as {hex}",
    "I|LDAP bind as svc_{job} succeeded",
    "I|disk usage /var at {n2}%",
    "I|memory usage {n3} MB / 2048 MB",
    "W|websocket {hex} reconnected after {ms}ms",
    "E|failed to write {file}: permission denied",
    "E|sync of {table} aborted after {d} errors",
]
LEVELS = {"I": ["INFO", "INFO", "INFO", "DEBUG"], "W": ["WARN"], "E": ["ERROR", "ERROR", "WARN"]}
LOG_HEADERS = [
    "Log excerpt:",
    "From the application log (times are UTC):",
    "Relevant part of the log:",
    "Here's what the log shows around that time:",
    "Server log, trimmed:",
    "Console output:",
    "Output from the agent log:",
    "Last lines of the log before I copied it:",
]
PATHS = [
    "/api/v2/orders",
    "/api/v1/session",
    "/login",
    "/checkout/confirm",
    "/api/v3/sync",
    "/reports/export",
    "/graphql",
    "/api/v1/users/me",
    "/static/app.js",
    "/webhooks/inbound",
    "/api/v2/invoices",
    "/oauth/token",
    "/api/v1/devices",
    "/search",
    "/api/v2/appointments",
    "/health",
]
HOSTS = [
    "api.internal",
    "auth.example.com",
    "db01.corp.local",
    "cdn.example.net",
    "gw-eu-2.example.io",
    "ldap.corp.local",
    "smtp.example.org",
    "queue-3.internal",
    "files.example.com",
    "sso.example.com",
]
TABLES = ["orders", "customers", "line_items", "sessions", "audit_log", "devices", "appointments", "invoices", "events"]
JOBS = ["nightly_export", "sync_contacts", "rebuild_index", "send_digest", "cleanup_tmp", "import_feed", "backup"]
EVENTS = ["order.created", "invoice.paid", "user.updated", "device.offline", "payment.captured", "ticket.closed"]
FLAGS = ["new_editor", "fast_sync", "v2_checkout", "beta_reports", "async_upload"]
FILES = ["report.xlsx", "scan_0042.pdf", "photo.jpg", "export.csv", "backup.bak", "labels.zpl"]

JAVA_PKGS = ["com.acme.sync", "org.example.billing", "io.vendor.client", "net.corp.portal", "com.example.orders"]
JAVA_CLASSES = [
    "SyncWorker",
    "InvoiceService",
    "HttpTransport",
    "SessionManager",
    "OrderRepository",
    "ReportExporter",
    "TokenValidator",
    "QueueConsumer",
    "DeviceRegistry",
    "PdfRenderer",
]
JAVA_METHODS = ["run", "process", "execute", "handle", "load", "render", "validate", "send", "apply", "fetchPage"]
JAVA_EXC = [
    'java.lang.NullPointerException: Cannot invoke "String.length()" because "value" is null',
    "java.lang.IllegalStateException: Connection pool shut down",
    "java.net.ConnectException: Connection refused",
    "java.util.concurrent.TimeoutException: Waited 30000 milliseconds",
    "org.hibernate.exception.JDBCConnectionException: Unable to acquire JDBC Connection",
    "javax.net.ssl.SSLHandshakeException: PKIX path building failed",
]
PY_EXC = [
    "KeyError: 'customer_id'",
    "AttributeError: 'NoneType' object has no attribute 'get'",
    "requests.exceptions.ConnectionError: HTTPSConnectionPool(host='api.internal', port=443): Max retries exceeded",
    "ValueError: time data '2024-13-01' does not match format '%Y-%m-%d'",
    "psycopg2.OperationalError: server closed the connection unexpectedly",
    "PermissionError: [Errno 13] Permission denied: '/var/lib/app/state.json'",
]
PY_MODULES = [
    "app/sync/worker.py",
    "app/api/views.py",
    "app/services/billing.py",
    "lib/client/http.py",
    "app/tasks/export.py",
    "app/models/order.py",
    "app/integrations/crm.py",
]
PY_FUNCS = ["handle", "run_batch", "_post", "serialize", "fetch_page", "apply_rules", "export_rows", "__call__"]
NET_EXC = [
    "System.InvalidOperationException: Sequence contains no elements",
    "System.Net.Http.HttpRequestException: No such host is known.",
    "System.UnauthorizedAccessException: Access to the path 'C:\\ProgramData\\App\\cache' is denied.",
    "System.Data.SqlClient.SqlException (0x80131904): Timeout expired.",
    "System.IO.IOException: The process cannot access the file because it is being used by another process.",
]
NET_NS = ["Contoso.Sync", "Vendor.Client.Core", "App.Services", "Corp.Portal.Web", "Acme.Billing"]
JS_EXC = [
    "TypeError: Cannot read properties of undefined (reading 'id')",
    "TypeError: e.items is not iterable",
    "ReferenceError: Intl is not defined",
    "Error: Request failed with status code 502",
    "RangeError: Maximum call stack size exceeded",
    "SyntaxError: Unexpected token '<', \"<!DOCTYPE \"... is not valid JSON",
]
JS_FUNCS = [
    "Object.<anonymous>",
    "async Promise.all (index 0)",
    "render",
    "onSubmit",
    "fetchJson",
    "u.dispatch",
    "HTMLButtonElement.<anonymous>",
    "Array.map",
    "t.value",
    "processQueue",
]
TRACE_HEADERS = [
    "Stack trace:",
    "The exception from the log:",
    "Full error:",
    "Error details (copied from the dialog):",
    "This is the trace it writes:",
    "Exception:",
]

DISCLAIMERS = [
    "CONFIDENTIALITY NOTICE: This e-mail message, including any attachments, is for the sole use of the "
    "intended recipient(s) and may contain confidential and privileged information. Any unauthorized review, "
    "use, disclosure or distribution is prohibited. If you are not the intended recipient, please contact the "
    "sender by reply e-mail and destroy all copies of the original message.",
    "This email and any files transmitted with it are confidential and intended solely for the use of the "
    "individual or entity to whom they are addressed. If you have received this email in error please notify "
    "the system manager. This message contains confidential information and is intended only for the "
    "individual named. If you are not the named addressee you should not disseminate, distribute or copy this "
    "e-mail. Please notify the sender by e-mail if you have received this e-mail by mistake and "
    "delete this e-mail from your system. E-mail transmission cannot be guaranteed to be secure or error-free "
    "as information could be intercepted, corrupted, lost, destroyed, arrive late or incomplete, or contain "
    "viruses. The sender therefore does not accept liability for any errors or omissions in the contents of "
    "this message, which arise as a result of e-mail transmission.",
    "{company} is registered in England and Wales under company number {n8}. Registered office: {street}, "
    "{city}. VAT registration number GB {n9}. We will process any personal data you send us in line with our "
    "privacy notice, available at https://www.{domain}/privacy.",
    "Diese E-Mail enthält vertrauliche und/oder rechtlich geschützte Informationen. Wenn Sie nicht der richtige "
    "Adressat sind oder diese E-Mail irrtümlich erhalten haben, informieren Sie bitte sofort den Absender und "
    "vernichten Sie diese Mail. Das unerlaubte Kopieren sowie die unbefugte Weitergabe dieser Mail sind nicht "
    "gestattet.\n\nThis e-mail may contain confidential and/or privileged information. If you are not the "
    "intended recipient (or have received this e-mail in error) please notify the sender and destroy this "
    "e-mail. Any unauthorised copying, disclosure or distribution of the material in this e-mail is strictly "
    "forbidden.",
    "Ce message et toutes les pièces jointes sont confidentiels et établis à l'intention exclusive de ses "
    "destinataires. Toute utilisation ou diffusion non autorisée est interdite. Si vous avez reçu ce message "
    "par erreur, merci de le détruire et d'en avertir l'expéditeur.",
    "PRIVACY: The information in this message is intended for the addressee only. It may be subject to legal "
    "professional privilege. If you have received it in error, please tell us by return e-mail and delete it; "
    "you must not copy it or disclose its contents to anyone. We have taken precautions to minimise the risk of "
    "transmitting software viruses, but we advise you to carry out your own virus checks on any attachment to "
    "this message. We cannot accept liability for any loss or damage caused by software viruses.",
    "Please consider the environment before printing this e-mail.",
    "This message has been scanned for viruses and dangerous content by {company}'s mail gateway and is "
    "believed to be clean.",
    "{company} will never ask you to change bank details by e-mail. If you receive such a request, please "
    "call your usual contact on a number you already hold before making any payment.",
    "NOTICE: This communication is intended only for the person or entity to which it is addressed and may "
    "contain information that is proprietary, privileged, confidential or otherwise legally exempt from "
    "disclosure. If you are not the named addressee, you are not authorized to read, print, retain, copy or "
    "disseminate this message or any part of it. Our privacy policy explains how we handle personal data: "
    "https://www.{domain}/legal/privacy. {company}, {street}, {city}.",
]
SIGN_OFFS = [
    "Thanks,",
    "Thanks in advance,",
    "Kind regards,",
    "Best,",
    "Cheers,",
    "Regards,",
    "Many thanks,",
    "Best regards,",
    "Thank you,",
    "BR,",
    "All the best,",
    "Thanks again,",
]
MOBILE_SIGS = [
    "Sent from my iPhone",
    "Sent from Outlook for Android",
    "Get Outlook for iOS",
    "Sent from my Galaxy",
    "Sent from Mail for Windows",
    "Sent from my iPad",
]
SIG_EXTRAS = [
    "Working hours: Mon-Thu. My working hours may not be your working hours; please don't feel obliged to reply outside yours.",
    "Pronouns: she/her",
    "Pronouns: he/him",
    "Pronouns: they/them",
    "We've moved! Please note our new address above.",
    "Follow us on LinkedIn: linkedin.com/company/{slug}",
    "Book a meeting with me: https://cal.example.com/{user}",
    "I'm in the office on Tuesdays and Wednesdays.",
    "Winner, Regional Business Awards 2023",
]

ACK_TEXTS = [
    "Thank you for contacting us. This is an automated message to confirm we have received your request and a "
    "reference number has been assigned: {ref}. Please keep this number in the subject line of any reply so "
    "that your message is added to the same case. You can check the progress of your request at any time in "
    "the customer portal.",
    "Hello,\n\nWe've received your message and created case {ref}. One of our agents will review it and get back "
    "to you. In the meantime, you might find an answer in our knowledge base at https://help.example.com.\n\n"
    "Please do not reply above this line if you want to add information; reply to this e-mail instead.",
    "Your request ({ref}) has been received and is being reviewed by our staff. Our opening hours are Monday to "
    "Friday, 08:00-18:00 local time. Messages received outside those hours are picked up on the next working day.",
    "Thanks for reaching out! Your ticket {ref} is now open. To help us help you faster, please include your "
    "account number, the app version and a screenshot of any error message if you have not already done so.",
]
INFO_REQUEST_TEXTS = [
    "Hi {first},\n\nThanks for your message. So that we can look into this, could you send us:\n\n"
    "1. The version of the app you are using\n2. Your operating system and browser\n3. The time it happened, "
    "with time zone\n4. Any log files or screenshots\n\nOnce we have these we'll pass the case to the right team.",
    "Hello {first},\n\nThank you for the details so far. Could you please reproduce the problem once more with "
    "debug logging enabled (Settings > Advanced > Diagnostics) and attach the resulting file? Please also let us "
    "know if anything changed on your side recently (updates, network changes, new devices).",
    "Hi {first},\n\nI've picked up your case. Before I go further, can you confirm the account or tenant this is "
    "about and whether you are using the cloud or the self-hosted version? A HAR file from the browser would also "
    "be very useful; instructions are here: https://help.example.com/har",
    "Dear {first},\n\nThank you for getting in touch. I have reviewed your case notes. To continue, please send "
    "the output of the diagnostics tool and confirm the exact steps you follow, so that we can try to reproduce "
    "it in our test environment.",
]
FORWARD_TEXTS = [
    "Forwarding this to the support address as discussed, see below.",
    "Can you take this one? Adding the support mailbox in copy.",
    "FYI - sending this on to the vendor, details from our side are above.",
    "Passing this along, I don't have access to raise it in the portal myself.",
    "As mentioned in the stand-up. Looping in support.",
]

CONTACT_TEXTS = [
    "The best way to reach me is by e-mail at {email}. If you'd rather call, my direct line is {phone}; "
    "if I don't pick up, {colleague} ({colleague_email}) knows the background and can answer questions.",
    "For anything on-site, our facilities contact is {colleague} ({colleague_email}). I'm the contact for "
    "everything else. Please reply to all so that both of us see the answer.",
    "If you need remote access to a machine, please arrange it with {colleague} from our IT team "
    "({colleague_email}); they handle all remote sessions for us and will need a session code from you.",
    "Please keep {colleague} ({colleague_email}) in copy on replies, they manage our contract with you "
    "and like to see what is going on.",
    "I work part-time, so if I don't reply straight away please contact {colleague} on {colleague_email} "
    "or call the main office number, {phone}.",
    "Contact for this case: {name}, {email}, {phone}. Alternative contact: {colleague}, {colleague_email}.",
]
PS_TEXTS = [
    "P.S. Unrelated, but our billing contact has changed: invoices should now go to accounts@{domain}.",
    "P.S. Could you also update our company address in your system? We moved to {street}, {city} a while ago "
    "and some letters still go to the old one.",
    "P.S. Your customer portal keeps asking me to accept the new terms every time I log in, even though I "
    "have accepted them several times. Not important, just mentioning it.",
    "P.S. If you send a satisfaction survey at the end of this, please send it to me and not to the "
    "generic mailbox, nobody reads that one.",
    "P.S. We'd also like to add two more users to our account at some point; I'll raise that separately.",
    "P.S. The link to the knowledge base in your auto-reply goes to a page that asks me to log in twice.",
    "P.S. Our purchase order number for this year is PO-{n6}, in case you need it for anything.",
    "P.S. I tried the chat on your website first, but it said no agents were online, so I'm writing instead.",
]
ACCOUNT_FIELDS = [
    ("Customer number", lambda r, w: str(r.randint(100000, 9999999))),
    ("Contract", lambda r, w: f"{r.choice(['SUP', 'MSA', 'CT'])}-{r.randint(2019, 2025)}-{r.randint(100, 999)}"),
    ("Company", lambda r, w: w.company),
    ("Site", lambda r, w: f"{w.street}, {w.city}"),
    ("Billing contact", lambda r, w: f"accounts@{w.domain}"),
    ("Reported by", lambda r, w: f"{w.first} {w.last} ({w.title})"),
    ("Phone", lambda r, w: w.phone),
    ("Internal reference", lambda r, w: fill(r, "{ref}")),
    ("Cost centre", lambda r, w: str(r.randint(1000, 9999))),
]

CONFIG_STYLES = ["yaml", "ini", "json"]
CONFIG_KEYS = [
    "timeout_seconds",
    "retries",
    "base_url",
    "log_level",
    "pool_size",
    "batch_size",
    "region",
    "cache_ttl",
    "verify_ssl",
    "proxy",
    "max_upload_mb",
    "sync_interval",
    "locale",
    "tenant",
    "feature_new_ui",
    "smtp_host",
    "smtp_port",
    "auth_mode",
    "callback_url",
    "workers",
]
CONFIG_HEADERS = [
    "Our config (secrets removed):",
    "Relevant part of the config file:",
    "Settings export:",
    "Current configuration:",
    "This is the config we deploy with:",
]


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def hexid(r: random.Random, n: int = 8) -> str:
    return "".join(r.choice("0123456789abcdef") for _ in range(n))


def uuid(r: random.Random) -> str:
    return "-".join(hexid(r, n) for n in (8, 4, 4, 4, 12))


def fill(r: random.Random, text: str) -> str:
    """Replace {placeholders} in a snippet with random but plausible values."""
    values = {
        "d": lambda: str(r.randint(1, 9)),
        "n2": lambda: str(r.randint(10, 99)),
        "n3": lambda: str(r.randint(100, 999)),
        "n4": lambda: str(r.randint(1000, 9999)),
        "n6": lambda: str(r.randint(100000, 999999)),
        "n8": lambda: str(r.randint(10000000, 99999999)),
        "n9": lambda: f"{r.randint(100, 999)} {r.randint(1000, 9999)} {r.randint(10, 99)}",
        "ms": lambda: str(r.randint(3, 2500)),
        "ms4": lambda: str(r.randint(1000, 30000)),
        "hex": lambda: hexid(r, r.choice([8, 12, 16])),
        "path": lambda: r.choice(PATHS),
        "host": lambda: r.choice(HOSTS),
        "table": lambda: r.choice(TABLES),
        "job": lambda: r.choice(JOBS),
        "event": lambda: r.choice(EVENTS),
        "flag": lambda: r.choice(FLAGS),
        "file": lambda: r.choice(FILES),
        "code": lambda: r.choice(
            ["200"] * 6 + ["201", "204", "301", "400", "401", "403", "404", "409", "500", "502", "503"]
        ),
        "code4": lambda: r.choice(["400", "401", "403", "404", "409", "422"]),
        "code5": lambda: r.choice(["500", "502", "503", "504"]),
        "a": lambda: str(r.randint(2, 5)),
        "user": lambda: f"{r.choice(FIRST_NAMES).lower()}.{r.choice(LAST_NAMES).lower().replace(chr(39), '')}",
        "ip": lambda: f"10.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}",
        "port": lambda: str(r.randint(1024, 65535)),
        "kb": lambda: f"KB{r.randint(1000, 99999)}",
        "date": lambda: random_date(r).strftime("%Y-%m-%d"),
        "hh": lambda: f"{r.randint(7, 18):02d}",
        "mm": lambda: f"{r.randint(0, 59):02d}",
        "ref": lambda: (
            f"{r.choice(['CS', 'REQ', 'INC', 'SR', '#'])}{'-' if r.random() < 0.5 else ''}{r.randint(10000, 999999)}"
        ),
    }
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)]() if m.group(1) in values else m.group(0), text)


def random_date(r: random.Random) -> dt.datetime:
    start = dt.datetime(2024, 1, 8)
    return start + dt.timedelta(
        days=r.randint(0, 600), hours=r.randint(7, 19), minutes=r.randint(0, 59), seconds=r.randint(0, 59)
    )


class Person:
    def __init__(self, r: random.Random):
        self.first = r.choice(FIRST_NAMES)
        self.last = r.choice(LAST_NAMES)
        self.title = r.choice(TITLES)
        self.company, self.domain, self.street, self.city, self.prefix = r.choice(COMPANIES)
        slug = f"{self.first}.{self.last}".lower().replace("'", "")
        self.email = f"{slug}@{self.domain}"
        self.user = slug
        self.phone = f"{self.prefix} {r.randint(100, 999)} {r.randint(1000, 9999)}"
        self.mobile = f"{self.prefix.split()[0]} {r.randint(70, 79)}{r.randint(10, 99)} {r.randint(100000, 999999)}"


# --------------------------------------------------------------------------------------------
# Filler pieces. Each takes the row's RNG, the reporter and a character budget, and returns a
# piece no longer than the budget, or None when it cannot fit.
# --------------------------------------------------------------------------------------------


def piece_environment(r, who, budget):
    keys = r.sample(ENV_KEYS, r.randint(4, 11))
    style = r.choice(["- {k}: {v}", "{k}: {v}", "  {k:<22}{v}", "* {k} = {v}"])
    lines = [r.choice(ENV_HEADERS)] + [style.format(k=k, v=f(r)) for k, f in keys]
    return _fit(lines, budget, min_lines=4)


def piece_steps(r, who, budget):
    steps = r.sample(STEPS, r.randint(3, 9))
    bullet = r.choice(["- ", "* ", "• ", None])
    lines = [r.choice(STEP_HEADERS)]
    for i, step in enumerate(steps, 1):
        prefix = f"{i}. " if bullet is None else bullet
        lines.append(prefix + fill(r, step) + r.choice(STEP_SUFFIXES))
    return _fit(lines, budget, min_lines=3)


def piece_browsers(r, who, budget):
    combos = []
    for _ in range(r.randint(3, 8)):
        browser = r.choice(BROWSERS)
        os_pool = (
            [o for o in OS_VALUES if o.startswith(("macOS", "iOS"))]
            if browser.startswith("Safari")
            else [o for o in OS_VALUES if not o.startswith("iOS")]
            if not browser.startswith("Samsung")
            else ["Android 14 (One UI 6.1)"]
        )
        combos.append(f"{fill(r, browser)} on {fill(r, r.choice(os_pool))}")
    header = r.choice(["Tested on:", "Browsers/OS we tried:", "Same result on all of these:", "Devices checked:"])
    return _fit([header] + [f"  {c}" for c in combos], budget, min_lines=3)


def piece_attachments(r, who, budget):
    names = [fill(r, r.choice(ATTACH_NAMES)) for _ in range(r.randint(1, 6))]
    lines = [r.choice(["Attachments:", "Attached:", "[attachments]", "Files attached to this message:"])]
    for name in names:
        size = r.choice([f"{r.randint(12, 980)} KB", f"{r.randint(1, 24)}.{r.randint(0, 9)} MB"])
        lines.append(f"  {name} ({size})")
    return _fit(lines, budget, min_lines=2)


def piece_log(r, who, budget):
    style = r.choice(["java", "syslog", "json", "access", "plain"])
    t = random_date(r)
    host = r.choice(["app01", "web-2", "srv-prod-3", "pos-terminal-14", "laptop-" + hexid(r, 4), "worker-a"])
    lines = [r.choice(LOG_HEADERS)]
    fence = r.random() < 0.3
    if fence:
        lines.append("```")
    cap = r.randint(8, 70)
    pid = r.randint(300, 30000)
    for _ in range(cap):
        t += dt.timedelta(milliseconds=r.randint(5, 40000))
        kind, msg = r.choice(LOG_MESSAGES).split("|", 1)
        level, msg = r.choice(LEVELS[kind]), fill(r, msg)
        if style == "java":
            line = f"{t:%Y-%m-%d %H:%M:%S},{r.randint(0, 999):03d} {level:<5} [{r.choice(['main', 'worker-' + str(r.randint(1, 8)), 'http-nio-8080-exec-' + str(r.randint(1, 20))])}] {r.choice(JAVA_PKGS)}.{r.choice(JAVA_CLASSES)} - {msg}"
        elif style == "syslog":
            line = f"{t:%b %d %H:%M:%S} {host} app[{pid}]: {level.lower()}: {msg}"
        elif style == "json":
            line = json.dumps(
                {
                    "ts": t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{r.randint(0, 999):03d}Z",
                    "level": level.lower(),
                    "svc": host,
                    "msg": msg,
                }
            )
        elif style == "access":
            ip = fill(r, "{ip}")
            line = (
                f'{ip} - - [{t:%d/%b/%Y:%H:%M:%S} +0000] "{r.choice(["GET", "GET", "POST", "PUT"])} '
                f'{r.choice(PATHS)} HTTP/1.1" {fill(r, "{code}")} {r.randint(120, 90000)} "-" '
                f'"Mozilla/5.0 ({r.choice(["Windows NT 10.0; Win64; x64", "Macintosh; Intel Mac OS X 10_15_7", "X11; Linux x86_64", "iPhone; CPU iPhone OS 17_4 like Mac OS X"])})"'
            )
        else:
            line = f"[{t:%H:%M:%S}] {level}: {msg}"
        lines.append(line)
    if fence:
        lines.append("```")
    return _fit(lines, budget, min_lines=4, keep_last=fence)


def piece_trace(r, who, budget):
    kind = r.choice(["java", "python", "dotnet", "js"])
    lines = [r.choice(TRACE_HEADERS)]
    n = r.randint(5, 30)
    if kind == "java":
        lines.append(
            f'Exception in thread "{r.choice(["main", "pool-2-thread-1", "scheduler-1"])}" {r.choice(JAVA_EXC)}'
        )
        for _ in range(n):
            cls = r.choice(JAVA_CLASSES)
            lines.append(f"\tat {r.choice(JAVA_PKGS)}.{cls}.{r.choice(JAVA_METHODS)}({cls}.java:{r.randint(20, 900)})")
        lines.append(f"\t... {r.randint(5, 60)} more")
    elif kind == "python":
        lines.append("Traceback (most recent call last):")
        for _ in range(n // 2 + 2):
            mod, fn = r.choice(PY_MODULES), r.choice(PY_FUNCS)
            lines.append(f'  File "/srv/app/{mod}", line {r.randint(10, 600)}, in {fn}')
            lines.append(
                f"    {r.choice(['result = self._post(url, payload)', 'return handler(request)', 'rows = list(cursor)', 'data = json.loads(body)', 'obj = cache[key]', 'self.client.send(batch)'])}"
            )
        lines.append(r.choice(PY_EXC))
    elif kind == "dotnet":
        lines.append(r.choice(NET_EXC))
        for _ in range(n):
            ns = r.choice(NET_NS)
            cls = r.choice(JAVA_CLASSES)
            lines.append(
                f"   at {ns}.{cls}.{r.choice(JAVA_METHODS).capitalize()}Async() in C:\\src\\{ns}\\{cls}.cs:line {r.randint(10, 700)}"
            )
    else:
        lines.append(f"Uncaught (in promise) {r.choice(JS_EXC)}")
        for _ in range(n):
            lines.append(
                f"    at {r.choice(JS_FUNCS)} (https://app.example.com/static/js/main.{hexid(r, 8)}.js:{r.randint(1, 3)}:{r.randint(100, 99999)})"
            )
    return _fit(lines, budget, min_lines=4)


def piece_headers(r, who, budget):
    lines = [
        r.choice(
            [
                "Request/response headers from the browser dev tools:",
                "Copied from the Network tab:",
                "HAR summary for the failing request:",
            ]
        )
    ]
    method, path = r.choice(["GET", "POST", "PUT"]), r.choice(PATHS)
    lines += [
        f"{method} {path} HTTP/2",
        f"Host: {r.choice(HOSTS)}",
        f"User-Agent: Mozilla/5.0 ({r.choice(['Windows NT 10.0; Win64; x64', 'Macintosh; Intel Mac OS X 10_15_7', 'X11; Linux x86_64'])}) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/12{r.randint(0, 9)}.0.0.0 Safari/537.36",
        "Accept: application/json, text/plain, */*",
        f"Accept-Language: {r.choice(['en-GB,en;q=0.9', 'en-US,en;q=0.9', 'de-DE,de;q=0.9,en;q=0.8'])}",
        "Accept-Encoding: gzip, deflate, br",
        f"X-Request-ID: {uuid(r)}",
        f"Cookie: session=[removed]; _ga=GA1.2.{r.randint(10**8, 10**9)}.{r.randint(10**9, 2 * 10**9)}",
        "",
        f"HTTP/2 {fill(r, '{code}')}",
        f"date: {random_date(r):%a, %d %b %Y %H:%M:%S} GMT",
        "content-type: application/json; charset=utf-8",
        f"content-length: {r.randint(0, 9000)}",
        f"x-correlation-id: {hexid(r, 16)}",
        f"server: {r.choice(['nginx', 'cloudflare', 'envoy', 'Microsoft-IIS/10.0', 'AmazonS3'])}",
        f"cache-control: {r.choice(['no-store', 'private, max-age=0', 'no-cache'])}",
        f"strict-transport-security: max-age={r.choice([31536000, 15552000])}; includeSubDomains",
    ]
    return _fit(lines, budget, min_lines=6)


def piece_network(r, who, budget):
    host = r.choice(HOSTS)
    ip = fill(r, "{ip}")
    kind = r.choice(["ping", "tracert", "nslookup"])
    lines = [r.choice(["Network check from the affected machine:", "Output of the network test:", "Diagnostics:"])]
    if kind == "ping":
        lines.append(f"PS C:\\> ping {host}")
        lines.append(f"Pinging {host} [{ip}] with 32 bytes of data:")
        count, ttl = r.choice([4, 4, 4, 10]), r.choice([54, 57, 116, 118])
        times = [r.randint(4, 180) for _ in range(count)]
        lines += [f"Reply from {ip}: bytes=32 time={t}ms TTL={ttl}" for t in times]
        lines += [
            "",
            f"Ping statistics for {ip}:",
            f"    Packets: Sent = {count}, Received = {count}, Lost = 0 (0% loss),",
            "Approximate round trip times in milli-seconds:",
            f"    Minimum = {min(times)}ms, Maximum = {max(times)}ms, Average = {sum(times) // count}ms",
        ]
    elif kind == "tracert":
        lines.append(f"$ traceroute {host}")
        for hop in range(1, r.randint(6, 18)):
            hop_ip = fill(r, "{ip}")
            lines.append(
                f"{hop:2d}  {hop_ip}  {r.randint(1, 90)}.{r.randint(100, 999)} ms  {r.randint(1, 90)}.{r.randint(100, 999)} ms  {r.randint(1, 90)}.{r.randint(100, 999)} ms"
            )
    else:
        lines.append(f"> nslookup {host}")
        lines.append(f"Server:  dns{r.randint(1, 3)}.corp.local")
        lines.append(f"Address:  10.0.0.{r.randint(2, 20)}")
        lines.append("")
        lines.append("Non-authoritative answer:")
        lines.append(f"Name:    {host}")
        lines.append(f"Addresses:  {ip}")
        for _ in range(r.randint(1, 4)):
            lines.append(f"          {fill(r, '{ip}')}")
    return _fit(lines, budget, min_lines=len(lines) if kind != "tracert" else 5)


def piece_config(r, who, budget):
    keys = r.sample(CONFIG_KEYS, r.randint(5, 14))
    style = r.choice(CONFIG_STYLES)

    values = {
        "timeout_seconds": lambda: r.choice([10, 30, 60, 120, 300]),
        "retries": lambda: r.randint(0, 5),
        "base_url": lambda: f"https://{r.choice(HOSTS)}/api/v{r.randint(1, 3)}",
        "log_level": lambda: r.choice(["info", "debug", "warn"]),
        "pool_size": lambda: r.choice([5, 10, 20, 50]),
        "batch_size": lambda: r.choice([50, 100, 250, 500, 1000]),
        "region": lambda: r.choice(["eu-west-1", "eu-central-1", "us-east-2", "ap-southeast-2", "uk-south"]),
        "cache_ttl": lambda: r.choice([60, 300, 900, 3600]),
        "verify_ssl": lambda: r.random() < 0.85,
        "proxy": lambda: r.choice(["", "http://proxy.corp.local:8080", "none"]),
        "max_upload_mb": lambda: r.choice([10, 25, 50, 100]),
        "sync_interval": lambda: r.choice([30, 60, 300, 900]),
        "locale": lambda: r.choice(["en_GB", "en_US", "de_DE", "fr_FR", "nl_NL"]),
        "tenant": lambda: "tenant-" + hexid(r, 6),
        "feature_new_ui": lambda: r.random() < 0.5,
        "smtp_host": lambda: r.choice(["smtp.example.org", "smtp.office365.com", "mail.corp.local"]),
        "smtp_port": lambda: r.choice([25, 465, 587]),
        "auth_mode": lambda: r.choice(["saml", "oidc", "ldap", "password"]),
        "callback_url": lambda: f"https://{r.choice(HOSTS)}/webhooks/inbound",
        "workers": lambda: r.randint(1, 16),
    }

    def value(k):
        return values[k]()

    items = [(k, value(k)) for k in keys]
    lines = [r.choice(CONFIG_HEADERS)]
    if style == "json":
        body = json.dumps(dict(items), indent=2).splitlines()
        return _fit(lines + body, budget, min_lines=len(body) + 1)
    if style == "ini":
        lines.append(f"[{r.choice(['general', 'connection', 'sync', 'app'])}]")
        lines += [f"{k} = {str(v).lower() if isinstance(v, bool) else v}" for k, v in items]
    else:
        lines += [f"{k}: {str(v).lower() if isinstance(v, bool) else v}" for k, v in items]
    return _fit(lines, budget, min_lines=4)


def piece_portal_footer(r, who, budget):
    lines = [r.choice(["--- submitted via the support portal ---", "[Web form submission]", "==== Form data ===="])]
    fields = [
        ("Form", r.choice(["Technical issue", "General enquiry", "Account & billing", "Something isn't working"])),
        ("Contact preference", r.choice(["e-mail", "phone", "either"])),
        ("Customer number", str(r.randint(100000, 9999999))),
        ("Submitted by", who.email),
        ("Company", who.company),
        ("Browser", fill(r, r.choice(BROWSERS))),
        ("IP address", fill(r, "{ip}")),
        ("Session", hexid(r, 24)),
        ("Page", f"https://portal.example.com{r.choice(PATHS)}"),
        ("Consent to contact", "yes"),
    ]
    lines += [f"{k}: {v}" for k, v in r.sample(fields, r.randint(4, len(fields)))]
    return _fit(lines, budget, min_lines=3)


def piece_contact(r, who, budget):
    colleague = Person(r)
    text = r.choice(CONTACT_TEXTS).format(
        email=who.email,
        phone=who.phone,
        name=f"{who.first} {who.last}",
        colleague=f"{colleague.first} {colleague.last}",
        colleague_email=f"{colleague.user}@{who.domain}",
    )
    return text if len(text) <= budget else None


def piece_ps(r, who, budget):
    text = fill(r, r.choice(PS_TEXTS).format(domain=who.domain, street=who.street, city=who.city, n6="{n6}"))
    return text if len(text) <= budget else None


def piece_account(r, who, budget):
    fields = r.sample(ACCOUNT_FIELDS, r.randint(3, len(ACCOUNT_FIELDS)))
    lines = [r.choice(["Account details:", "Our details:", "For your records:", "Customer details"])]
    lines += [f"{k}: {f(r, who)}" for k, f in fields]
    return _fit(lines, budget, min_lines=3)


MIDDLE_PIECES = [
    piece_environment,
    piece_steps,
    piece_browsers,
    piece_attachments,
    piece_log,
    piece_trace,
    piece_headers,
    piece_network,
    piece_config,
    piece_portal_footer,
    piece_contact,
    piece_ps,
    piece_account,
]
ELASTIC_PIECES = [piece_log, piece_trace, piece_log, piece_headers, piece_network]
PROSE_PIECES = [piece_steps, piece_contact, piece_ps]
SMALL_PIECES = [piece_attachments, piece_steps, piece_browsers, piece_network, piece_environment, piece_log]
REPEATABLE = {piece_log, piece_trace}  # a second log excerpt or trace is common; a second env list is not


def _fit(lines, budget, min_lines, keep_last=False):
    """Drop trailing lines until the piece fits the budget; None if fewer than min_lines remain."""
    last = lines[-1] if keep_last else None
    body = lines[:-1] if keep_last else list(lines)
    while body and len("\n".join(body + ([last] if keep_last else []))) > budget:
        body.pop()
    if len(body) < min_lines:
        return None
    return "\n".join(body + ([last] if keep_last else []))


def signature(r, who, plain=0.25):
    """A sign-off and signature block; `plain` is the chance of just a sign-off and first name."""
    if r.random() < 0.12:
        return r.choice(MOBILE_SIGS)
    sign_off = r.choice(SIGN_OFFS)
    if r.random() < plain:
        return f"{sign_off}\n{who.first}"
    lines = [sign_off, "", f"{who.first} {who.last}" if r.random() < 0.7 else f"-- \n{who.first} {who.last}"]
    if r.random() < 0.85:
        lines.append(who.title)
    lines.append(who.company)
    if r.random() < 0.6:
        lines.append(f"{who.street}, {who.city}")
    contact = [f"T {who.phone}", f"M {who.mobile}", who.email, f"www.{who.domain}"]
    contact = r.sample(contact, r.randint(1, 4))
    lines.append(r.choice([" | ", "\n", " · "]).join(contact))
    if r.random() < 0.3:
        lines.append("")
        lines.append(r.choice(SIG_EXTRAS).format(slug=who.domain.split(".")[0], user=who.user))
    return "\n".join(lines)


def disclaimer(r, who):
    text = r.choice(DISCLAIMERS).format(
        company=who.company,
        street=who.street,
        city=who.city,
        domain=who.domain,
        n8=r.randint(10**7, 10**8 - 1),
        n9=fill(r, "{n9}"),
    )
    return "\n".join(textwrap.wrap(text, 100, break_long_words=False)) if r.random() < 0.5 else text


def quoted_thread(r, who):
    """One or two earlier messages, quoted with '>' under an 'On <date>, <name> wrote:' line."""
    vendor = r.choice(VENDOR_DOMAINS)
    desk_name, desk_mail = r.choice(SUPPORT_DESKS)
    desk_mail = desk_mail.format(vendor=vendor)
    when = random_date(r)
    blocks = []
    kinds = r.sample(["ack", "info", "forward"], r.randint(1, 2))
    for depth, kind in enumerate(kinds, 1):
        when -= dt.timedelta(hours=r.randint(1, 70), minutes=r.randint(0, 59))
        if kind == "ack":
            author, mail, text = desk_name, desk_mail, fill(r, r.choice(ACK_TEXTS))
        elif kind == "info":
            agent = f"{r.choice(FIRST_NAMES)} {r.choice(LAST_NAMES)}"
            author = r.choice([agent, f"{agent} ({desk_name})"])
            mail, text = desk_mail, r.choice(INFO_REQUEST_TEXTS).format(first=who.first)
            text += f"\n\n{r.choice(['Kind regards', 'Best wishes', 'Thanks'])},\n{agent.split()[0]}\n{desk_name}"
        else:
            colleague = Person(r)
            author, mail = f"{colleague.first} {colleague.last}", f"{colleague.user}@{who.domain}"
            text = r.choice(FORWARD_TEXTS)
        header = r.choice(
            [
                f"On {when:%a}, {when.day} {when:%b %Y} at {when:%H:%M}, {author} <{mail}> wrote:",
                f"On {when:%a, %b} {when.day}, {when.year} at {when:%I:%M %p}, {author} <{mail}> wrote:",
                f"Am {when:%d.%m.%Y} um {when:%H:%M} schrieb {author} <{mail}>:",
                f"-----Original Message-----\nFrom: {author} <{mail}>\nSent: {when:%A, %B} {when.day}, {when.year} {when:%I:%M %p}\nTo: {who.first} {who.last} <{who.email}>\nSubject: RE: case {fill(r, '{ref}')}",
            ]
        )
        paragraphs = []
        for para in text.split("\n"):
            paragraphs += textwrap.wrap(para, 72, break_long_words=False) or [""]
        outer, inner = ">" * (depth - 1), ">" * depth
        blocks.append(
            "\n".join(
                [(outer + " " + line).strip() for line in header.split("\n")]
                + [(inner + " " + line).rstrip() for line in paragraphs]
            )
        )
    return "\n" + "\n\n".join(blocks)


# --------------------------------------------------------------------------------------------
# Assembling a row
# --------------------------------------------------------------------------------------------


def target_length(r: random.Random) -> int:
    """Body length to aim for: about 1 in 4 short enough to fit 512 tokens, median near 3,500."""
    if r.random() < 0.24:
        return r.randint(1530, 1700)
    while True:
        x = int(r.lognormvariate(8.34, 0.42))
        if 1850 <= x <= MAX_BODY - 150:
            return x


def make_body(r: random.Random, ticket: str) -> str:
    who = Person(r)
    target = target_length(r)
    for _ in range(50):  # a draw of pieces can fall short of the target; draw again
        body = _assemble(r, ticket, who, target)
        if MIN_BODY <= len(body) <= MAX_BODY and (len(body) < 1800) == (target < 1800):
            return body
    raise RuntimeError(f"no body of about {target} characters for ticket {ticket[:40]!r}")


def _assemble(r: random.Random, ticket: str, who: Person, target: int) -> str:
    head = ticket.strip()
    if r.random() < 0.55:
        head += (r.choice([" ", "\n\n"]) if head[-1] in ".!?)" else "\n\n") + r.choice(LEADINS)

    # Short bodies (about 1 in 5) get only prose-like pieces, so that they also fit in 512 tokens:
    # logs, traces and headers cost about one token per two characters, prose one per four.
    short = target < 1800
    ending = [signature(r, who, plain=0.6 if short else 0.25)]
    if r.random() < (0.9 if short else 0.55):
        ending.append(disclaimer(r, who))
    if r.random() < 0.45:
        ending.append(quoted_thread(r, who))
    # Short targets cannot carry everything: drop the thread, then the disclaimer.
    while len(ending) > 1 and len(head) + len("\n\n".join(ending)) > target - 400:
        ending.pop()

    def total(middle):
        return len("\n\n".join([head, *middle, *ending]))

    middle: list[str] = []
    pool = PROSE_PIECES if short else MIDDLE_PIECES
    pieces = r.sample(pool, r.randint(min(2, len(pool)), len(pool)))
    used = set()
    for make in pieces:
        budget = target - total(middle) - 2
        if budget < 150:
            break
        piece = make(r, who, budget)
        if piece:
            middle.append(piece)
            used.add(make)
    # Top up long bodies with further log excerpts or traces until close to the target.
    tries = 0
    while target - total(middle) > 100 and tries < 30:
        budget = target - total(middle) - 2
        if short:
            options = [p for p in PROSE_PIECES if p not in used]
            if not options:
                break
        else:
            options = [
                p for p in (ELASTIC_PIECES if budget > 600 else SMALL_PIECES) if p in REPEATABLE or p not in used
            ]
        make = r.choice(options or ELASTIC_PIECES)
        piece = make(r, who, budget)
        if piece:
            middle.insert(r.randint(0, len(middle)), piece)
            used.add(make)
        tries += 1
    body = "\n\n".join([head, *middle, *ending])
    filler = body[len(ticket.strip()) :]
    bad = FORBIDDEN.search(filler)
    assert not bad, f"filler contains {bad.group(0)!r}"
    return body


GREETING = re.compile(
    r"^(?:(?:hi|hello|hey|dear|good (?:morning|afternoon)|morning|afternoon)(?: [a-z]+)?[,!.:]*\s+"
    r"|(?:team|all|everyone|folks|support)[,!:]\s+"
    r"|heads up[:,!]\s*|sorry if this is the wrong place,?\s*(?:but\s+)?|ok so\s+|so,?\s+|quick one[:,]?\s*"
    r"|just flagging that\s+)",
    re.IGNORECASE,
)


def make_subject(r: random.Random, ticket: str, product: str) -> str:
    """A short subject line written from the ticket, as the sender would type it."""
    text = " ".join(ticket.split())
    for _ in range(3):
        stripped = GREETING.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if s]
    candidate = ""
    for sentence in sentences:
        if LABEL_WORD.search(sentence):
            break
        candidate = f"{candidate} {sentence}" if candidate else sentence
        if len(candidate) >= 25:
            break
    candidate = candidate.rstrip(".")
    if candidate:
        if len(candidate) > 70:
            cut = candidate[:70].rsplit(" ", 1)[0].rstrip(",;:-")
            candidate = cut + r.choice(["...", "…", ""])
        candidate = candidate[0].upper() + candidate[1:] if r.random() < 0.7 else candidate
        style = r.choice(["{s}", "{s}", "{s}", "{p}: {s}", "[{p}] {s}", "Re: {s}", "RE: {s}", "Fwd: {s}", "{s} ({p})"])
    else:
        style = r.choice(["Problem with {p}", "{p} question", "Issue with {p}", "{p}", "Question about {p}"])
    subject = style.format(s=candidate, p=product)
    if LABEL_WORD.search(subject):
        subject = f"Ticket about {product}"
    return subject


def split_sources(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """Disjoint, urgency-stratified draws of N_TRAIN and N_TEST source tickets."""
    r = random.Random(f"{SEED}-split")
    by_label = {
        label: sorted((row for row in rows if row["urgency"] == label), key=lambda x: x["id"]) for label in LABELS
    }
    counts_train = _stratified_counts(by_label, N_TRAIN)
    counts_test = _stratified_counts(by_label, N_TEST)
    train, test = [], []
    for label in LABELS:
        pool = by_label[label][:]
        r.shuffle(pool)
        train += pool[: counts_train[label]]
        test += pool[counts_train[label] : counts_train[label] + counts_test[label]]
    r.shuffle(train)
    r.shuffle(test)
    assert not {x["id"] for x in train} & {x["id"] for x in test}
    return train, test


def _stratified_counts(by_label: dict, n: int) -> dict:
    """Largest-remainder allocation of n rows in proportion to the source's label counts."""
    total = sum(len(v) for v in by_label.values())
    exact = {label: n * len(by_label[label]) / total for label in LABELS}
    counts = {label: int(exact[label]) for label in LABELS}
    for label in sorted(LABELS, key=lambda lb: (-(exact[lb] - counts[lb]), LABELS.index(lb)))[
        : n - sum(counts.values())
    ]:
        counts[label] += 1
    return counts


def build_rows(sources: list[dict], first_number: int) -> list[dict]:
    out = []
    for number, src in enumerate(sources, first_number):
        row_id = f"lt-{number:04d}"
        r = random.Random(f"{SEED}-{row_id}")  # seeded by the new id only, never by the label
        subject = make_subject(r, src["ticket"], src["product"])
        body = make_body(r, src["ticket"])
        assert MIN_BODY <= len(body) <= MAX_BODY, (row_id, len(body))
        assert not LABEL_WORD.search(subject), subject
        out.append(
            {"id": row_id, "subject": subject, "body": body, "product": src["product"], "urgency": src["urgency"]}
        )
    return out


def main() -> None:
    rows = [json.loads(line) for line in SOURCE.read_text(encoding="utf-8").splitlines() if line.strip()]
    train_src, test_src = split_sources(rows)
    train = build_rows(train_src, 1)
    test = build_rows(test_src, len(train) + 1)
    with TRAIN_OUT.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(train)
    with TEST_OUT.open("w", encoding="utf-8") as f:
        for row in test:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(train)} rows to {TRAIN_OUT.name} and {len(test)} rows to {TEST_OUT.name}")


if __name__ == "__main__":
    main()
