; RainMaker's Windows installer (NSIS 3, Unicode). Built by packaging/windows.sh, which passes
;   /DVERSION=x.y.z /DTRAY_EXE=... /DAGENT_EXE=... /DICON=... /DOUTFILE=...
; and, when RAINMAKER_WEBVIEW2_BOOTSTRAPPER names Microsoft's MicrosoftEdgeWebview2Setup.exe,
;   /DWEBVIEW2_BOOTSTRAPPER=...
;
; Installs for the current user (no administrator rights, as a trader's account often has none)
; into %LOCALAPPDATA%\Programs\RainMaker:
;   rainmaker-tray.exe  the tray app and dashboard
;   rainmaker.exe       the `rainmaker` command (the folder is added to the user's PATH)
; adds a Start-menu entry and an uninstaller (Settings > Apps), and offers to start the app at
; login: HKCU\...\Run\RainMaker, the entry the app's own "Start at login" switch changes.
; WebView2, which draws the dashboard, is part of Windows 11 and current Windows 10; where it
; is missing the installer runs the bundled bootstrapper, or says where to get it.

; A 64-bit installer, like the programs it installs (and Wine here has no 32-bit side, so
; the tests can run it).
Target amd64-unicode
!include "MUI2.nsh"
!include "LogicLib.nsh"
!include "StrFunc.nsh"
!include "WinMessages.nsh"
${StrStr}
${UnStrRep}

!ifndef VERSION
  !error "pass /DVERSION=..."
!endif

!define APP "RainMaker"
!define UNINSTALL_KEY "Software\Microsoft\Windows\CurrentVersion\Uninstall\${APP}"
!define RUN_KEY "Software\Microsoft\Windows\CurrentVersion\Run"
; The WebView2 Runtime's client id (Microsoft's documentation: "Detect if a WebView2 Runtime is
; already installed").
!define WEBVIEW2_ID "{F3017226-FE2A-4295-8BDF-00C3A9A7E4C5}"
!define WEBVIEW2_URL "https://go.microsoft.com/fwlink/p/?LinkId=2124703"

Name "${APP}"
OutFile "${OUTFILE}"
InstallDir "$LOCALAPPDATA\Programs\${APP}"
InstallDirRegKey HKCU "Software\${APP}" "InstallDir"
RequestExecutionLevel user
SetCompressor /SOLID lzma
VIProductVersion "${VERSION}.0"
VIAddVersionKey "ProductName" "${APP}"
VIAddVersionKey "FileDescription" "${APP} installer"
VIAddVersionKey "FileVersion" "${VERSION}"
VIAddVersionKey "ProductVersion" "${VERSION}"
VIAddVersionKey "LegalCopyright" "MIT OR Apache-2.0"

!define MUI_ICON "${ICON}"
!define MUI_UNICON "${ICON}"
!define MUI_ABORTWARNING
!define MUI_COMPONENTSPAGE_NODESC
!define MUI_FINISHPAGE_RUN "$INSTDIR\rainmaker-tray.exe"
!define MUI_FINISHPAGE_RUN_TEXT "Start ${APP} now"
!insertmacro MUI_PAGE_DIRECTORY
!insertmacro MUI_PAGE_COMPONENTS
!insertmacro MUI_PAGE_INSTFILES
!insertmacro MUI_PAGE_FINISH
!insertmacro MUI_UNPAGE_CONFIRM
!insertmacro MUI_UNPAGE_INSTFILES
!insertmacro MUI_LANGUAGE "English"

Section "${APP} (tray app and rainmaker command)" SecApp
  SectionIn RO
  ; An upgrade replaces files the running app holds open: ask it to go first.
  nsExec::Exec 'taskkill /IM rainmaker-tray.exe'
  Pop $0
  Sleep 500
  SetOutPath "$INSTDIR"
  File "/oname=rainmaker-tray.exe" "${TRAY_EXE}"
  File "/oname=rainmaker.exe" "${AGENT_EXE}"
  File "/oname=rainmaker.ico" "${ICON}"
  WriteUninstaller "$INSTDIR\uninstall.exe"

  CreateDirectory "$SMPROGRAMS\${APP}"
  CreateShortcut "$SMPROGRAMS\${APP}\${APP}.lnk" "$INSTDIR\rainmaker-tray.exe" "" "$INSTDIR\rainmaker.ico"
  CreateShortcut "$SMPROGRAMS\${APP}\Uninstall ${APP}.lnk" "$INSTDIR\uninstall.exe"

  ; The `rainmaker` command: the install folder on the user's PATH, once.
  ReadRegStr $0 HKCU "Environment" "Path"
  ${StrStr} $1 ";$0;" ";$INSTDIR;"
  ${If} $1 == ""
    ${If} $0 == ""
      WriteRegExpandStr HKCU "Environment" "Path" "$INSTDIR"
    ${Else}
      WriteRegExpandStr HKCU "Environment" "Path" "$0;$INSTDIR"
    ${EndIf}
    SendMessage ${HWND_BROADCAST} ${WM_SETTINGCHANGE} 0 "STR:Environment" /TIMEOUT=2000
  ${EndIf}

  WriteRegStr HKCU "Software\${APP}" "InstallDir" "$INSTDIR"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "DisplayName" "${APP}"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "DisplayVersion" "${VERSION}"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "Publisher" "${APP}"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "DisplayIcon" "$INSTDIR\rainmaker.ico"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "InstallLocation" "$INSTDIR"
  WriteRegStr HKCU "${UNINSTALL_KEY}" "UninstallString" '"$INSTDIR\uninstall.exe"'
  WriteRegDWORD HKCU "${UNINSTALL_KEY}" "NoModify" 1
  WriteRegDWORD HKCU "${UNINSTALL_KEY}" "NoRepair" 1

  Call WebView2
SectionEnd

Section "Start ${APP} when I sign in" SecLogin
  WriteRegStr HKCU "${RUN_KEY}" "${APP}" '"$INSTDIR\rainmaker-tray.exe"'
SectionEnd

Function WebView2
  ReadRegStr $0 HKLM "SOFTWARE\WOW6432Node\Microsoft\EdgeUpdate\Clients\${WEBVIEW2_ID}" "pv"
  ${If} $0 == ""
  ${OrIf} $0 == "0.0.0.0"
    ReadRegStr $0 HKCU "Software\Microsoft\EdgeUpdate\Clients\${WEBVIEW2_ID}" "pv"
  ${EndIf}
  ${If} $0 != ""
  ${AndIf} $0 != "0.0.0.0"
    DetailPrint "WebView2 Runtime $0 is installed."
    Return
  ${EndIf}
!ifdef WEBVIEW2_BOOTSTRAPPER
  DetailPrint "Installing the Microsoft Edge WebView2 Runtime..."
  SetOutPath "$PLUGINSDIR"
  File "/oname=MicrosoftEdgeWebview2Setup.exe" "${WEBVIEW2_BOOTSTRAPPER}"
  ExecWait '"$PLUGINSDIR\MicrosoftEdgeWebview2Setup.exe" /silent /install' $1
  ${If} $1 == 0
    Return
  ${EndIf}
  DetailPrint "The WebView2 bootstrapper ended with code $1."
!endif
  MessageBox MB_YESNO|MB_ICONEXCLAMATION "${APP}'s window needs the Microsoft Edge WebView2 Runtime, which is not installed on this PC.$\r$\n$\r$\nMirroring works without it, but the dashboard will not open until it is installed. Open Microsoft's download page now?$\r$\n${WEBVIEW2_URL}" /SD IDNO IDNO done
    ExecShell "open" "${WEBVIEW2_URL}"
  done:
FunctionEnd

Section "Uninstall"
  nsExec::Exec 'taskkill /IM rainmaker-tray.exe'
  Pop $0
  Sleep 500
  Delete "$INSTDIR\rainmaker-tray.exe"
  Delete "$INSTDIR\rainmaker.exe"
  Delete "$INSTDIR\rainmaker.ico"
  Delete "$INSTDIR\uninstall.exe"
  RMDir "$INSTDIR"
  Delete "$SMPROGRAMS\${APP}\${APP}.lnk"
  Delete "$SMPROGRAMS\${APP}\Uninstall ${APP}.lnk"
  RMDir "$SMPROGRAMS\${APP}"
  DeleteRegValue HKCU "${RUN_KEY}" "${APP}"

  ReadRegStr $0 HKCU "Environment" "Path"
  ${UnStrRep} $0 ";$0;" ";$INSTDIR;" ";"
  ; Drop the separators the two sides added.
  StrCpy $0 $0 "" 1
  StrCpy $0 $0 -1
  ${If} $0 == ""
    DeleteRegValue HKCU "Environment" "Path"
  ${Else}
    WriteRegExpandStr HKCU "Environment" "Path" "$0"
  ${EndIf}
  SendMessage ${HWND_BROADCAST} ${WM_SETTINGCHANGE} 0 "STR:Environment" /TIMEOUT=2000

  DeleteRegKey HKCU "${UNINSTALL_KEY}"
  DeleteRegKey HKCU "Software\${APP}"
  ; The user's configuration and state (%APPDATA%\rainmaker, %LOCALAPPDATA%\rainmaker) stay,
  ; so a reinstall finds its folders, pairings and trash as they were.
SectionEnd
