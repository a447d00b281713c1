{
  "variables": {
    "quicmap_ngtcp2%": "<!(node -p \"process.env.QUICMAP_NGTCP2||0\")"
  },
  "targets": [
    {
      "target_name": "quicmap_native",
      "sources": [
        "src/addon.cc",
        "src/mmap.cc",
        "src/copy.cc",
        "src/uffd.cc",
        "src/nbd.cc",
        "src/nbd_serve.cc",
        "src/splice.cc",
        "src/fallocate.cc",
        "src/gcm_pages.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O2", "-fexceptions", "-Wall", "-Wno-unused-result"],
      "conditions": [
        ["OS!='linux'", { "type": "none" }]
      ]
    },
    {
      "target_name": "quicmap_quic",
      "sources": ["src/quic.cc", "src/quic_identity.cc"],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")"],
      "defines": ["NAPI_VERSION=8", "NODE_ADDON_API_DISABLE_DEPRECATED"],
      "libraries": ["-lngtcp2_crypto_gnutls", "-lngtcp2", "-lgnutls"],
      "cflags!": ["-fno-exceptions"],
      "cflags_cc!": ["-fno-exceptions"],
      "cflags_cc": ["-std=c++17", "-O2", "-fexceptions", "-Wall", "-Wno-unused-result"],
      "conditions": [
        ["OS!='linux' or quicmap_ngtcp2!=1", { "type": "none" }]
      ]
    }
  ]
}
